"""The one runner the recipe scripts share: command-line arguments, load the recipe's config, train, segment a
held-out scan and score it. Each recipe (pipelines/<recipe>.py) holds only what is its own: its description and,
where the paper asks for it, its own segmentation step."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"


def parse_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--budget", default="10m", help="training wall-clock budget (default 10m)")
    ap.add_argument("--iterations", type=int, default=None, help="train this many iterations in total")
    ap.add_argument("--patch", type=int, default=None, help="cubic patch size (default: the config's)")
    ap.add_argument("--filters", type=int, default=None, help="base filters (default: the config's)")
    ap.add_argument("--out", default="pipeline_output", help="output folder (default pipeline_output)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="any config override a.b=v")
    return ap.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
    out = [f"train.budget={args.budget}", f"output_dir={Path(args.out) / 'runs'}"]
    if args.iterations:
        out += [f"train.iterations={args.iterations}", f"train.iters_per_epoch={min(args.iterations, 250)}"]
    if args.patch:
        out.append(f"train.patch_size=[{args.patch}, {args.patch}, {args.patch}]")
    if args.filters:
        out.append(f"model.params.base_filters={args.filters}")
    return out + list(args.overrides)


def run_recipe(config: str, doc: str, argv: list[str] | None = None, segment=None) -> dict:
    """Train configs/<config>.yaml (shortened by the arguments) and segment + score a held-out scan with
    ``segment(seg, cfg, out)`` (default: :func:`segment_test_scan`); returns the run folder and the results."""
    import medseg3d

    args = parse_args(doc, argv)
    # 1. the recipe: the paper's settings live in the config; the arguments only shorten the run
    cfg = medseg3d.load_config(REPO / "configs" / f"{config}.yaml", overrides(args))
    print(f"{cfg.name}: {cfg.model.name}, patch {cfg.train.patch_size}, loss {cfg.train.loss}")
    # 2. train: a run folder with config.yaml, splits.json, log.csv, progress.png, tensorboard/, last.pt, best.pt,
    #    validation/ and validation_metrics.csv (scored in each case's own geometry)
    run_dir = medseg3d.train(cfg)
    # 3. segment scans the model never saw, in their own geometry, and score them
    if segment is None:
        seg = medseg3d.Segmenter.from_checkpoint(run_dir)
        return {"run_dir": run_dir, **segment_test_scan(seg, Path(args.out), regions=cfg.data.regions)}
    return {"run_dir": run_dir, **segment(run_dir, cfg, Path(args.out))}


def test_scan(root: Path = SAMPLES) -> tuple[list[Path], Path | None]:
    """The first held-out scan of a sample data set (its channel files) and its reference label, if any."""
    meta = json.loads((root / "dataset.json").read_text())
    if "test" in meta:  # MSD: one 4D file
        scan = root / meta["test"][0]
        files = [scan]
    else:  # nnU-Net: one file per channel
        first = sorted((root / "imagesTs").glob("*_0000.nii.gz"))[0]
        case = first.name[: -len("_0000.nii.gz")]
        files = [root / "imagesTs" / f"{case}_{c:04d}.nii.gz" for c in range(len(meta["channel_names"]))]
        scan = root / "imagesTs" / f"{case}.nii.gz"
    ref = root / "labelsTs" / scan.name
    return files, ref if ref.is_file() else None


def segment_test_scan(seg, out: Path, regions: dict | None = None, root: Path = SAMPLES) -> dict:
    """Segment the first held-out scan of a sample data set with a Segmenter, write its label map (in the
    scan's geometry) to ``out`` and score it against the reference: {"prediction", "labels", "dice", "pred"}."""
    from medseg3d.io.writers import write_image

    files, ref = test_scan(root)
    scan = seg.read([str(f) for f in files])
    pred = seg.segment(scan)
    path = write_image(pred.labels, scan, Path(out) / f"{scan.name}_seg.nii.gz")
    print(f"wrote {path}: label values {sorted(int(v) for v in np.unique(pred.labels))} "
          f"({pred.runtime_s:.1f}s)")
    return {"prediction": path, "labels": pred.labels, "pred": pred,
            "dice": score(pred.labels, ref, seg.labels, regions)}


def score(pred_labels: np.ndarray, ref_path: Path | None, labels: dict, regions: dict | None) -> dict:
    """Dice per class (or region) of a prediction against its reference; prints and returns it."""
    from medseg3d.engine.metrics import case_metrics, masks_of, structures
    from medseg3d.io.nifti import read_label

    if ref_path is None:
        return {}
    structs = structures(labels, regions)
    m = case_metrics(masks_of(pred_labels, structs), masks_of(read_label(ref_path), structs), list(structs),
                     hd95=False)
    print("Dice on the held-out scan: " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in m.items()))
    return m
