"""Demo: train a small 3D U-Net on data_samples/ (about 2.5 minutes on 2 CPU cores), segment a held-out scan,
write the segmentation (NIfTI) and a PNG overlay, and print Dice per class against the scan's reference.

    python pipelines/demo.py [--budget 150s] [--out demo_output]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import medseg3d
from medseg3d.engine.metrics import dice_per_class
from medseg3d.io.nifti import read_label
from medseg3d.io.preview import save_preview
from medseg3d.io.writers import write_image

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="150s", help="training wall-clock budget (default 150s)")
    ap.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    args = ap.parse_args()
    out = Path(args.out)

    cfg = medseg3d.load_config(REPO / "configs" / "demo.yaml",
                               [f"train.budget={args.budget}", f"output_dir={out / 'runs'}"])
    t0 = time.perf_counter()
    run_dir = medseg3d.train(cfg)
    print(f"trained in {time.perf_counter() - t0:.0f}s -> {run_dir}")

    meta = json.loads((REPO / "data_samples" / "dataset.json").read_text())
    scan_path = REPO / "data_samples" / meta["test"][0]
    ref_path = REPO / "data_samples" / "labelsTs" / scan_path.name
    seg = medseg3d.Segmenter.from_checkpoint(run_dir)
    scan = seg.read(scan_path)
    pred = seg.segment(scan)
    labels = pred.labels
    seg_path = write_image(labels, scan, out / f"{scan.name}_seg.nii.gz")
    png = save_preview(scan, labels, seg.labels, out / f"{scan.name}_overlay.png", title=f"{scan.name}: prediction")
    print(f"segmented {scan_path.name} in {pred.runtime_s:.1f}s -> {seg_path}, {png}")

    ref = read_label(ref_path)
    names = [n for n, v in seg.labels.items() if v != 0]
    values = [v for v in seg.labels.values() if v != 0]
    dice = dice_per_class(labels, ref, values)
    print("Dice on the held-out scan (not trained on):")
    for n, v, d in zip(names, values, dice):
        print(f"  {n:<12} (label {v}): {d:.3f}")
    print(f"  mean: {np.nanmean(dice):.3f}")


if __name__ == "__main__":
    main()
