"""tests/plan: the fake device costs (fake_costs.py) are importable from its tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
