#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite (slow checks excluded; add `-m slow` to run those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
