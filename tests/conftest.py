"""Tests mirror the package layout (tests/<layer>/test_*.py); the shared fixtures in tests/helpers.py are
importable from every folder."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Windows run in PyTorch fp32 in the tests (exact and fast to start); the engines' own tests, and the tests that
# name an engine, choose theirs explicitly.
os.environ.setdefault("MEDSEG3D_ENGINE", "torch")
os.environ.setdefault("MEDSEG3D_PRECISION", "fp32")
