"""No New-Net (Isensee 2018) on BraTS: a 3D U-Net with instance norm and leaky ReLU, softmax over the BraTS
labels, evaluated on WT/TC/ET.

Trains configs/brats_nnn.yaml on data_samples/ (or your data with --set data.root=...), segments a held-out scan
in its own geometry and scores it against the reference.
The paper's postprocessing (enhancing tumour smaller than 500 voxels becomes necrosis) is in the config's
postprocess section, so `medseg3d infer` applies it too.

    python pipelines/brats_nnn.py [--budget 10m] [--iterations N] [--patch 64] [--filters 8] [--out pipeline_output]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recipe import run_recipe  # noqa: E402


def segment(run_dir, cfg, out: Path) -> dict:
    """Softmax over 0/1/2/4, then the paper's postprocessing (ET smaller than 500 voxels -> necrosis, from the
    checkpoint); Dice on WT / TC / ET."""
    import medseg3d
    from _recipe import segment_test_scan

    seg = medseg3d.Segmenter.from_checkpoint(run_dir)
    print(f"postprocessing from the checkpoint: relabel {seg.postprocess.relabel}")
    return segment_test_scan(seg, out, regions=cfg.data.regions)

def main(argv: list[str] | None = None) -> dict:
    return run_recipe("brats_nnn", __doc__, argv, segment=segment)


if __name__ == "__main__":
    main()
