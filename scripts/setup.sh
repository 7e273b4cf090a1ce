#!/usr/bin/env bash
# Creates .venv (once) and installs medseg3d into it. Needs only python3 (>= 3.10) on PATH.
# torch is installed first and pinned (constraints.txt) so that pip does not fetch a CUDA build on a CPU machine;
# set MEDSEG3D_TORCH to choose another torch requirement (e.g. "torch==2.13.0 --index-url ...").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "setup: $*" >&2; }
stamp=.venv/.medseg3d-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
t0=$(date +%s)
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
torch_req=${MEDSEG3D_TORCH:-torch==2.13.0}
say "installing $torch_req first (the CPU build unless MEDSEG3D_TORCH says otherwise; about 1 minute)"
.venv/bin/python -m pip install -q --disable-pip-version-check $torch_req
say "installing medseg3d with its dependencies and test tools (MONAI, nibabel, SimpleITK, highdicom, ONNX Runtime,"
say "  pytest, hypothesis, itk, ...; about 1-2 minutes on a first run)"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
echo "$want" > "$stamp"
say "ready in $(( $(date +%s) - t0 )) s: .venv/bin/medseg3d"
