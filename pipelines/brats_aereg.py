"""Autoencoder-regularised SegResNet (Myronenko 2018) on BraTS: sigmoid WT/TC/ET outputs, Dice + 0.1 L2 +
0.1 KL, written back as BraTS labels.

Trains configs/brats_aereg.yaml on data_samples/ (or your data with --set data.root=...), segments a held-out scan
in its own geometry and scores it against the reference.

    python pipelines/brats_aereg.py [--budget 10m] [--iterations N] [--patch 64] [--filters 8] [--out pipeline_output]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recipe import run_recipe  # noqa: E402


def segment(run_dir, cfg, out: Path) -> dict:
    """Three sigmoid region maps (WT, TC, ET), painted back as labels 0/1/2/4."""
    import medseg3d
    from _recipe import segment_test_scan

    seg = medseg3d.Segmenter.from_checkpoint(run_dir)
    res = segment_test_scan(seg, out, regions=cfg.data.regions)
    probs = res["pred"].probabilities  # (3, X, Y, Z) on the scan's grid
    voxel_ml = res["pred"].scan.voxel_volume_mm3 / 1000
    print("predicted region volumes: " + ", ".join(
        f"{name} {(p > 0.5).sum() * voxel_ml:.1f} ml" for name, p in zip(seg.regions, probs)))
    return res

def main(argv: list[str] | None = None) -> dict:
    return run_recipe("brats_aereg", __doc__, argv, segment=segment)


if __name__ == "__main__":
    main()
