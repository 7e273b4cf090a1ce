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

import medseg3d  # noqa: E402
from _recipe import REPO, overrides, parse_args, segment_test_scan  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)

    # 1. the recipe: the paper's settings live in the config; the arguments only shorten the run
    cfg = medseg3d.load_config(REPO / "configs" / "brats_nnn.yaml", overrides(args))
    print(f"{cfg.name}: {cfg.model.name}, patch {cfg.train.patch_size}, loss {cfg.train.loss}")

    # 2. train: a run folder with config.yaml, splits.json, log.csv, progress.png, tensorboard/, last.pt, best.pt
    run_dir = medseg3d.train(cfg)
    seg = medseg3d.Segmenter.from_checkpoint(run_dir)

    # 3. segment a scan the model never saw: softmax over 0/1/2/4, then the paper's ET -> necrosis rule
    print(f"postprocessing from the checkpoint: relabel {seg.postprocess.relabel}")
    res = segment_test_scan(seg, Path(args.out), regions=cfg.data.regions)  # 4. Dice on WT / TC / ET
    return {"run_dir": run_dir, **res}


if __name__ == "__main__":
    main()
