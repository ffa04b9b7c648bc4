#!/usr/bin/env bash
# Make (or refresh) the project's virtual environment at .venv, with gpuspawner
# installed editable and the extras named in $1 (default: test,docs).
# Cached: pip runs again only when pyproject.toml changes.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-test,docs}
venv="$repo/.venv"
python=${PYTHON:-python3}

stamp="$venv/.gpuspawner-stamp"
want="$(sha256sum "$repo/pyproject.toml" | cut -c1-16) $extras"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
echo "[venv] installing gpuspawner[$extras] into $venv" >&2
if ! "$python" -c "import venv, ensurepip" 2>/dev/null && command -v apt-get >/dev/null; then
    apt-get update -q && apt-get install -y -q python3-venv python3-pip  # a minimal Debian lacks them
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e "$repo[$extras]"
echo "$want" > "$stamp"
