#!/usr/bin/env bash
# Creates .venv (once) and installs medseg3d into it. Needs only python3 (>= 3.10) on PATH.
# torch is installed first and pinned (constraints.txt) so that pip does not fetch a CUDA build on a CPU machine;
# set MEDSEG3D_TORCH to choose another torch requirement (e.g. "torch==2.13.0 --index-url ...").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.medseg3d-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check ${MEDSEG3D_TORCH:-torch==2.13.0}
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
