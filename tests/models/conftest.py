"""The network tests: the contract every net keeps (test_contract.py), one file per paper family, the shared
parts (test_parts.py) and the model table (test_summary.py). ``model_cases`` holds the small instances and the
helpers they share."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # The nets here are tiny: on a loaded 2-core machine two intra-op threads spin-wait on each other and a
    # 32×32 conv becomes ~100× slower than on one thread. The setting is restored for the other test folders.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
