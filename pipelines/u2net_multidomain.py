"""3D U²-Net (Huang 2019): one model trained on two data sets at once (a 4-channel BraTS-like set with labels
0/1/2/4 and a 2-channel set with one lesion label), shared pointwise filters, per-domain depthwise filters,
norms, input adapters and heads.

Trains configs/u2net_multidomain.yaml on data_samples/ and data_samples/domain_b/, then segments a held-out
scan of each domain with that domain's sub-network and scores it.

    python pipelines/u2net_multidomain.py [--budget 10m] [--iterations N] [--patch 64] [--filters 8]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import medseg3d  # noqa: E402
from _recipe import REPO, overrides, parse_args, segment_test_scan  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    out = Path(args.out)

    # 1. one config, two data sets: data.domains names each with its own root (labels/channels from its files)
    cfg = medseg3d.load_config(REPO / "configs" / "u2net_multidomain.yaml", overrides(args))
    print(f"{cfg.name}: domains {', '.join(cfg.data.domains)}; a domain drawn per batch ({cfg.data.domain_sampling})")

    # 2. train: log.csv has validation Dice per domain (val_dice_<domain>_<class>)
    run_dir = medseg3d.train(cfg)

    # 3. segment a held-out scan of every domain with that domain's sub-network
    results = {}
    for name, src in cfg.data.domains.items():
        seg = medseg3d.Segmenter.from_checkpoint(run_dir, domain=name)
        print(f"[{name}] channels {seg.channels}, labels {seg.labels}")
        results[name] = segment_test_scan(seg, out / name, root=Path(src.root))
    return {"run_dir": run_dir, **results}


if __name__ == "__main__":
    main()
