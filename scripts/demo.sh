#!/usr/bin/env bash
# Sets up .venv if needed, then trains a small 3D U-Net on data_samples/ and segments a held-out scan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python pipelines/demo.py "$@"
