#!/usr/bin/env bash
# Run the demo hub: http://127.0.0.1:8000 from the top-level jupyterhub_config.py.
#
# As root on a fresh Debian machine it installs what is missing, starts the
# test bed's own Docker engine (deploy/testbed/testbed.sh; it never touches
# another engine's containers), builds the class image locally, and runs
# JupyterHub in the foreground. Ctrl-C stops the hub; students' servers and
# their home volumes stay (run it again to pick them up).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bash "$repo/deploy/venv.sh" test,docs  # first: the image pins the hub's JupyterHub version
bash "$repo/deploy/testbed/testbed.sh" all
eval "$(bash "$repo/deploy/testbed/testbed.sh" env)"
export GPUSPAWNER_DEMO_IMAGE="$GPUSPAWNER_IMAGE"

state="${GPUSPAWNER_TESTBED:-/var/lib/gpuspawner-testbed}/demo-hub"
mkdir -p "$state"
cd "$state"  # the hub's database, cookie secret and proxy pid file live here
echo "[demo] hub at http://127.0.0.1:8000 (any user name, password: ${GPUSPAWNER_DEMO_PASSWORD:-gpu-lab-demo}); engine $DOCKER_HOST" >&2
PATH="$repo/.venv/bin:$PATH" exec "$repo/.venv/bin/jupyterhub" -f "$repo/jupyterhub_config.py" "$@"
