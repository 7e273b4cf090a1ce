"""Tests mirror the package layout (tests/<layer>/test_*.py); the shared fixtures in tests/helpers.py are
importable from every folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
