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

from _recipe import run_recipe  # noqa: E402


def segment(run_dir, cfg, out: Path) -> dict:
    """A held-out scan of every domain, segmented by that domain's sub-network."""
    import medseg3d
    from _recipe import segment_test_scan

    results = {}
    for name, src in cfg.data.domains.items():
        seg = medseg3d.Segmenter.from_checkpoint(run_dir, domain=name)
        print(f"[{name}] channels {seg.channels}, labels {seg.labels}")
        results[name] = segment_test_scan(seg, out / name, root=Path(src.root))
    return results

def main(argv: list[str] | None = None) -> dict:
    return run_recipe("u2net_multidomain", __doc__, argv, segment=segment)


if __name__ == "__main__":
    main()
