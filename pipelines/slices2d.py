"""2D models on volumes: train a slices2d config (2D, or 2.5D with --context-slices) on data_samples/ for a
wall-clock budget, segment the held-out scans slice by slice, write each label map in its scan's geometry with
a PNG overlay, and print Dice per class against the reference labels.

    python pipelines/slices2d.py [--config configs/slices2d_unet.yaml] [--budget 150s] [--context-slices 2]
                                 [--set model.params.base_filters=16 ...] [--out slices2d_output]
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "slices2d_unet.yaml"),
                    help="a configs/slices2d_*.yaml (or any config with model.spatial_dims: 2)")
    ap.add_argument("--budget", default="150s", help="training wall-clock budget (default 150s)")
    ap.add_argument("--context-slices", type=int, default=None, help="2.5D: neighbours on each side as channels")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. --set train.lr=0.001")
    ap.add_argument("--out", default="slices2d_output", help="output folder (default slices2d_output)")
    args = ap.parse_args(argv)
    out = Path(args.out)

    overrides = [f"train.budget={args.budget}", f"output_dir={out / 'runs'}", *args.set]
    if args.context_slices is not None:
        overrides.append(f"model.context_slices={args.context_slices}")
    cfg = medseg3d.load_config(args.config, overrides)
    t0 = time.perf_counter()
    run_dir = medseg3d.train(cfg)
    print(f"trained in {time.perf_counter() - t0:.0f}s -> {run_dir}")

    seg = medseg3d.Segmenter.from_checkpoint(run_dir)  # the checkpoint knows it is 2D: no extra setting
    m = seg.config.model
    print(f"{m.name}, 2D slices across axis {m.slice_axis} of the {seg.config.preprocess.orientation} volume, "
          f"{m.context_slices} context slice(s) on each side")
    root = Path(cfg.data.root)
    meta = json.loads((root / cfg.data.dataset_json).read_text())
    names = [n for n, v in seg.labels.items() if v != 0]
    values = [v for v in seg.labels.values() if v != 0]
    results: dict = {"run_dir": run_dir, "predictions": [], "dice": {}}
    for rel in meta.get("test", []):
        scan_path = root / rel
        scan = seg.read(scan_path)
        pred = seg.segment(scan)
        seg_path = write_image(pred.labels, scan, out / f"{scan.name}_seg.nii.gz")
        labels = pred.labels
        save_preview(scan, labels, seg.labels, out / f"{scan.name}_overlay.png", title=f"{scan.name}: prediction")
        results["predictions"].append(seg_path)
        line = f"{scan.name}: {pred.runtime_s:.1f}s -> {seg_path}"
        ref_path = root / "labelsTs" / scan_path.name
        if ref_path.exists():
            dice = dice_per_class(labels, read_label(ref_path), values)
            results["dice"][scan.name] = dict(zip(names, dice))
            line += "; Dice " + ", ".join(f"{n} {d:.3f}" for n, d in zip(names, dice)) + f"; mean {np.nanmean(dice):.3f}"
        print(line)
    return results


if __name__ == "__main__":
    main()
