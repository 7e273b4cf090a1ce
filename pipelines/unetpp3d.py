"""UNet++ (Zhou 2018), 3D: nested dense skips with deep supervision, so the trained net can be pruned at
inference (UNet++ L1...L4).

Trains configs/unetpp3d.yaml on data_samples/ (or your data with --set data.root=...), segments a held-out scan
in its own geometry and scores it against the reference.
It segments the scan with the full net and with each pruned sub-network, printing Dice and time for each.

    python pipelines/unetpp3d.py [--budget 10m] [--iterations N] [--patch 64] [--filters 8] [--out pipeline_output]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recipe import run_recipe  # noqa: E402


def segment(run_dir, cfg, out: Path) -> dict:
    """UNet++ L4 (the full net), then the pruned L3, L2, L1, each to its own folder."""
    import medseg3d
    from _recipe import segment_test_scan

    seg = medseg3d.Segmenter.from_checkpoint(run_dir)
    net = seg.members[0].model
    results = {}
    for depth in range(net.depth, 0, -1):
        net.prune(depth)
        print(f"UNet++ L{depth}:")
        results[f"L{depth}"] = segment_test_scan(seg, out / f"L{depth}", regions=cfg.data.regions)
    return {**results[f"L{net.depth}"], "pruned": results}

def main(argv: list[str] | None = None) -> dict:
    return run_recipe("unetpp3d", __doc__, argv, segment=segment)


if __name__ == "__main__":
    main()
