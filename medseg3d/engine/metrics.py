"""Overlap and distance metrics: Dice and HD95 per class or region (MONAI's DiceMetric and
HausdorffDistanceMetric with percentile=95), per case and summarised; the same table for the trainer's final
validation and for ``medseg3d evaluate PRED_DIR GT_DIR``.

Conventions: a structure absent from both prediction and reference has Dice NaN (left out of means, counted
in ``n``); HD95 is NaN when either is empty. HD95 is in millimetres when the voxel spacing is given.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch


def dice_per_class(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, classes: list[int]) -> list[float]:
    """Dice of each class value in two label maps; NaN where the class is absent from both."""
    pred, ref = torch.as_tensor(pred), torch.as_tensor(ref)
    out = []
    for c in classes:
        p, r = pred == c, ref == c
        denom = int(p.sum() + r.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return out


def structures(labels: Mapping[str, int], regions: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
    """The structures metrics are reported on: the regions when given, else each foreground label."""
    if regions:
        return {k: list(v) for k, v in regions.items()}
    return {name: [v] for name, v in labels.items() if v != 0}


def masks_of(label: np.ndarray | torch.Tensor, structs: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """A label map (X, Y, Z) of file values -> boolean masks (S, X, Y, Z), one per structure."""
    lab = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    return torch.stack([torch.isin(lab, torch.as_tensor(list(v), dtype=lab.dtype)) for v in structs.values()])


def case_metrics(pred_masks: torch.Tensor, ref_masks: torch.Tensor, names: Sequence[str],
                 spacing: Sequence[float] | None = None, hd95: bool = True) -> dict[str, float]:
    """Dice (and HD95) per structure of one case from boolean masks (S, X, Y, Z):
    ``{"dice_<name>": ..., "hd95_<name>": ...}``."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    p = torch.as_tensor(pred_masks).bool()[None].float()
    r = torch.as_tensor(ref_masks).bool()[None].float()
    p_any = p.flatten(2).amax(-1)[0].bool()
    r_any = r.flatten(2).amax(-1)[0].bool()
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, r)[0]
    out: dict[str, float] = {}
    for i, n in enumerate(names):
        out[f"dice_{n}"] = float("nan") if not (p_any[i] or r_any[i]) else float(dice[i])
    if hd95:
        kw = {"spacing": [float(s) for s in spacing]} if spacing is not None else {}
        import warnings

        with warnings.catch_warnings():  # MONAI's own deprecation notice about an argument it passes itself
            warnings.simplefilter("ignore")
            hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p, r, **kw)[0]
        for i, n in enumerate(names):
            v = float(hd[i])
            out[f"hd95_{n}"] = v if (p_any[i] and r_any[i] and math.isfinite(v)) else float("nan")
    return out


def summarise(rows: list[dict], keys: Sequence[str]) -> list[dict]:
    """mean / std / n rows (NaN ignored) for the metric columns ``keys``."""
    out = []
    for stat in ("mean", "std", "n"):
        row: dict = {"case": stat}
        for k in keys:
            vals = np.array([r[k] for r in rows if k in r], dtype=float)
            vals = vals[~np.isnan(vals)]
            if stat == "n":
                row[k] = int(vals.size)
            elif vals.size:
                row[k] = float(vals.mean() if stat == "mean" else vals.std())
            else:
                row[k] = float("nan")
        out.append(row)
    return out


def write_table(rows: list[dict], path: str | Path, extra_first: Sequence[str] = ()) -> Path:
    """Per-case rows + the summary rows as CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k in rows[0] if k not in ("case", *extra_first)] if rows else []
    fields = ["case", *extra_first, *keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows + summarise(rows, keys):
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def labels_near(folder: str | Path) -> dict[str, int] | None:
    """The label names of the dataset a reference folder belongs to: ``dataset.json`` in the folder or its
    parent (nnU-Net's labelsTr/, MSD's labelsTr/), else None."""
    import json

    from ..data.datasets import _labels

    for d in (Path(folder), Path(folder).parent):
        path = d / "dataset.json"
        if path.is_file():
            try:
                raw = json.loads(path.read_text()).get("labels")
            except (ValueError, AttributeError):
                return None
            if isinstance(raw, dict):
                labels = _labels(raw, path)
                return {k: v for k, v in labels.items() if v != 0}
    return None


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label map file (NIfTI, NRRD, MHA) as integers (X, Y, Z) and its voxel -> RAS affine."""
    from ..errors import MedsegError
    from ..io.readers import read_image

    scan = read_image(path, allow_2d=True)  # (one read: the voxels and the geometry)
    if scan.data.shape[0] != 1:
        raise MedsegError(f"{path}: a label map must be 3D with one channel, got {scan.data.shape[0]} channels; "
                          f"give the label map, not an image")
    data = scan.data[0]
    rounded = np.round(data)
    if not np.array_equal(data, rounded):
        bad = data[data != rounded].flat[0]
        raise MedsegError(f"{path}: a label map must hold integers, found {bad:g}; give the label map, not an image "
                          f"or a probability map")
    return rounded.astype(np.int32), scan.affine


GRID_TOLERANCE_MM = 1e-2  # prediction and reference affines may differ by this much (float32 headers round)


def same_grid(pred: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> str | None:
    """None when two label maps share a grid (shape, and affine within GRID_TOLERANCE_MM), else what differs."""
    if pred[0].shape != ref[0].shape:
        return f"shape {pred[0].shape} differs from the reference's {ref[0].shape}"
    diff = float(np.abs(pred[1] - ref[1]).max())
    if diff > GRID_TOLERANCE_MM:
        shift = float(np.linalg.norm(pred[1][:3, 3] - ref[1][:3, 3]))
        return (f"its geometry differs from the reference's (origin {shift:.2f} mm apart; affines differ by up to "
                f"{diff:.3g})")
    return None


def score_files(pred_path: Path, ref_path: Path, structs: Mapping[str, Sequence[int]], hd95: bool = True,
                ref: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Dice (and HD95, in mm) per structure of a predicted label map file against its reference file; both
    must share one grid."""
    from ..errors import MedsegError

    pred = read_label_map(Path(pred_path))
    ref = ref or read_label_map(Path(ref_path))
    problem = same_grid(pred, ref)
    if problem:
        raise MedsegError(f"{pred_path}: {problem} ({ref_path}); evaluate predictions in their scan's geometry")
    spacing = np.sqrt((ref[1][:3, :3] ** 2).sum(0))
    return case_metrics(masks_of(pred[0], structs), masks_of(ref[0], structs), list(structs), spacing, hd95)


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, labels: Mapping[str, int] | None = None,
                     regions: Mapping[str, Sequence[int]] | None = None, hd95: bool = True,
                     allow_missing: bool = False) -> list[dict]:
    """Match label maps (NIfTI, NRRD, MHA) by case name in two folders and score each pair. ``labels`` (name
    -> value) default to the nonzero values found in the references, named ``label_<v>``. A reference without
    a prediction is an error (``allow_missing`` scores the others and warns), and so is a prediction on another
    grid than its reference."""
    import sys

    from ..errors import MedsegError
    from ..io.scan import IMAGE_SUFFIXES, case_name

    def files(d: Path) -> dict[str, Path]:
        if not d.is_dir():
            raise MedsegError(f"{d}: folder not found")
        return {case_name(p): p for p in sorted(d.iterdir())
                if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}

    preds, gts = files(Path(pred_dir)), files(Path(gt_dir))
    common = sorted(set(preds) & set(gts))
    if not common:
        raise MedsegError(f"{pred_dir}: no prediction matches a reference in {gt_dir} by file name")
    missing = sorted(set(gts) - set(preds))
    if missing:
        msg = (f"{pred_dir}: no prediction for {len(missing)} of {len(gts)} reference(s) in {gt_dir} "
               f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if not allow_missing:
            raise MedsegError(msg + "; segment them, or pass --allow-missing to score the others")
        print(f"warning: {msg}; scoring the other {len(common)}", file=sys.stderr)
    refs = {c: read_label_map(gts[c]) for c in common}
    if labels is None and not regions:
        values = sorted({int(v) for r, _ in refs.values() for v in np.unique(r)} - {0})
        labels = {f"label_{v}": v for v in values}
    structs = structures(labels or {}, regions)
    bad = []
    rows = []
    for c in common:
        try:
            rows.append({"case": c, **score_files(preds[c], gts[c], structs, hd95, ref=refs[c])})
        except MedsegError as e:
            bad.append(str(e))
    if bad:
        raise MedsegError(f"{len(bad)} of {len(common)} prediction(s) cannot be scored: " + "; ".join(bad[:3])
                          + ("; ..." if len(bad) > 3 else ""))
    return rows
