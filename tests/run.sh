#!/usr/bin/env bash
# The whole test command: set-up, fast unit tests, end-to-end tests on the
# real hub, proxy and engine, then the docs build (warnings are errors).
#
# As root on a fresh Debian machine it installs what it needs; a second run
# reuses the engine, the image and the virtual environment (seconds).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

bash deploy/venv.sh test,docs  # first: the image pins the hub's JupyterHub version
bash deploy/testbed/testbed.sh all
eval "$(bash deploy/testbed/testbed.sh env)"
export PATH="$repo/.venv/bin:$PATH"

echo "== lint and format (ruff, configured in pyproject.toml)" >&2
ruff check gpuspawner tests docs benchmarks deploy
ruff format --check gpuspawner tests docs benchmarks deploy
echo "== unit tests" >&2
pytest -m "not docker" "$@"
echo "== docs" >&2
sphinx-build -q -W --keep-going -b html docs docs/_build/html
echo "== end-to-end tests (real jupyterhub, configurable-http-proxy, Docker engine)" >&2
pytest -m docker --durations=25 "$@"  # the slowest, for keeping the whole under its budget
