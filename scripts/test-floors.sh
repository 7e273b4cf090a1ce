#!/usr/bin/env bash
# Checks that the dependency floors in pyproject.toml are true: builds a separate virtual environment with every
# declared dependency (and the `test` extra) at the lowest version its `>=` allows, torch pinned to the CPU build
# of torch==2.13.0, and runs a representative subset of the tests (config, io, bundle, inference) in it.
#
#   bash scripts/test-floors.sh                 # build .venv-floors (once) and run the subset
#   bash scripts/test-floors.sh -x -k export    # extra arguments go to pytest
#   MEDSEG3D_FLOORS_OVERRIDE="numpy==1.26.0 fire==0.4.0" bash scripts/test-floors.sh     # other versions, or
#                                                               # packages pyproject.toml does not declare
#   MEDSEG3D_FLOORS_FRESH=1 bash scripts/test-floors.sh                                   # rebuild the venv
#
# Slow and not part of CI: building the environment took 95 s on a loaded 2-core machine with pip's cache warm
# (add a few minutes when torch, ~200 MB, and the rest are downloaded for the first time); the tests took 40 s.
# The environment lives in .venv-floors/ (it ignores itself in git); it is rebuilt when pyproject.toml,
# constraints.txt or MEDSEG3D_FLOORS_OVERRIDE change. Needs python3 (>= 3.10) and access to a package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MEDSEG3D_FLOORS_VENV:-.venv-floors}
OVERRIDE=${MEDSEG3D_FLOORS_OVERRIDE:-}
say() { echo "test-floors: $*" >&2; }
pip() {  # quiet, without the warnings of find-links/index folders that do not exist on this machine
  "$VENV/bin/python" -m pip "$@" --disable-pip-version-check 2> >(grep -v "is ignored: it is neither a file" >&2)
}

# the floors: every `name>=version` of [project].dependencies and the `test` extra, as `name==version`
floors=$("$PY" - "$OVERRIDE" <<'EOF'
import re, sys
text = open("pyproject.toml").read()
try:
    import tomllib
    proj = tomllib.loads(text)["project"]
    deps = proj["dependencies"] + proj.get("optional-dependencies", {}).get("test", [])
except ModuleNotFoundError:  # python 3.10: the two lists, read plainly
    deps = []
    for key in ("dependencies", "test"):
        m = re.search(rf"^{key}\s*=\s*\[(.*?)\]", text, re.S | re.M)
        deps += re.findall(r'"([^"]+)"', m.group(1)) if m else []
override = {re.split(r"[=<>!~ ]", r)[0].lower(): r for r in sys.argv[1].split()}
out = []
for d in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*", d)
    if not m:
        sys.exit(f"test-floors: cannot read a '>=' floor in {d!r}; give every dependency as name>=version")
    name, extra, low = m.groups()
    if name.lower() == "torch":
        continue  # installed first, pinned
    out.append(override.pop(name.lower(), f"{name}{extra or ''}=={low}"))
print(" ".join(out + list(override.values())))  # overrides of undeclared packages are added
EOF
)
want=$(printf '%s\n' "$floors" "$(cat constraints.txt)" | sha256sum | cut -d' ' -f1)
stamp=$VENV/.floors-installed
if [ -n "${MEDSEG3D_FLOORS_FRESH:-}" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  t0=$(date +%s)
  rm -rf "$VENV"
  say "creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
  echo '*' > "$VENV/.gitignore"
  say "installing torch==2.13.0 first (the CPU build)"
  pip install -q torch==2.13.0
  say "installing the floors: $floors"
  pip install -q -c constraints.txt $floors
  pip install -q --no-deps -e .
  pip check >&2 || say "pip check reports conflicts (above)"
  pip freeze --exclude-editable > "$VENV/freeze.txt"
  echo "$want" > "$stamp"
  say "environment ready in $(( $(date +%s) - t0 )) s (installed versions: $VENV/freeze.txt)"
fi
say "running the subset: tests/config tests/io tests/bundle tests/inference"
t0=$(date +%s)
status=0
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/config tests/io tests/bundle tests/inference "$@" || status=$?
say "tests took $(( $(date +%s) - t0 )) s (exit $status)"
exit $status
