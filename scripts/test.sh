#!/usr/bin/env bash
# Run torchport's whole test suite (lint + type check + pytest, slow tests included) on a fresh machine.
# Sets up everything first (scripts/setup.sh: system packages, .venv, torchport[dev]).
# Extra arguments go to pytest, e.g.:  bash scripts/test.sh -m "not slow"   (the quick suite)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${TORCHPORT_VENV:-.venv}
echo "==> ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check . >/dev/null || { echo "ruff format would change files: run 'ruff format .'"; exit 1; }
echo "==> mypy"
"$VENV/bin/mypy" || { echo "mypy found type errors (config: [tool.mypy] in pyproject.toml)"; exit 1; }
echo "==> pytest"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider --timeout=900 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "no tests collected"; exit 1; fi
exit "$rc"
