"""3D U-Net (Cicek 2016): 3 poolings, batch norm, Dice + cross-entropy.

Trains configs/unet3d.yaml on data_samples/ (or your data with --set data.root=...), segments a held-out scan
in its own geometry and scores it against the reference.

    python pipelines/unet3d.py [--budget 10m] [--iterations N] [--patch 64] [--filters 8] [--out pipeline_output]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recipe import run_recipe  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return run_recipe("unet3d", __doc__, argv)


if __name__ == "__main__":
    main()
