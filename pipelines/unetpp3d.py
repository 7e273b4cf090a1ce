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

import medseg3d  # noqa: E402
from _recipe import REPO, overrides, parse_args, segment_test_scan  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)

    # 1. the recipe: the paper's settings live in the config; the arguments only shorten the run
    cfg = medseg3d.load_config(REPO / "configs" / "unetpp3d.yaml", overrides(args))
    print(f"{cfg.name}: {cfg.model.name}, patch {cfg.train.patch_size}, loss {cfg.train.loss}")

    # 2. train: a run folder with config.yaml, splits.json, log.csv, progress.png, tensorboard/, last.pt, best.pt
    run_dir = medseg3d.train(cfg)
    seg = medseg3d.Segmenter.from_checkpoint(run_dir)

    # 3. segment a scan the model never saw with UNet++ L4 (the full net), then the pruned L3, L2, L1
    net = seg.members[0].model
    results = {}
    for depth in range(net.depth, 0, -1):
        net.prune(depth)
        print(f"UNet++ L{depth}:")
        results[f"L{depth}"] = segment_test_scan(seg, Path(args.out) / f"L{depth}", regions=cfg.data.regions)
    return {"run_dir": run_dir, **results[f"L{net.depth}"], "pruned": results}


if __name__ == "__main__":
    main()
