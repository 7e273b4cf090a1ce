"""Validation, two ways.

- **Per epoch, on the preprocessed grid** (:func:`validate_on_grid`): the validation cases as cached for
  training, through the predictor's sliding window; Dice per class or region and the validation loss. Fast, so
  it can run every few epochs; log.csv's ``val_*`` columns and progress.png show it.
- **Final, in each case's own geometry** (:func:`final_validation`): each validation case's files go through the
  same Segmenter as ``medseg3d infer`` (preprocessing, sliding window, inversion to the scan's grid, the
  checkpoint's postprocessing); the label maps are written to ``RUN/validation/`` and scored against the
  reference label files by the same code as ``medseg3d evaluate``, so ``validation_metrics.csv`` is what
  ``medseg3d evaluate RUN/validation LABELS -o table.csv`` writes for them (``--allow-missing`` when LABELS also
  holds the training cases; ``--regions`` for a region-trained model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from monai.utils import convert_to_tensor

from ..bundle import Head
from ..config import Config
from ..data.labels import labels_to_regions
from ..inference.predictor import predict_logits
from ..inference.segmenter import Segmenter
from ..io.readers import read_scan
from ..io.writers import write_image
from .metrics import case_metrics, masks_of, score_files, summarise, write_table


def validate_on_grid(model: torch.nn.Module, domains: Iterable[Any], cfg: Config, device: torch.device,
                     loss_fn, multi: bool) -> dict[str, float]:
    """Mean validation loss and Dice per class/region (per domain) on the preprocessed grid, as log columns
    ``val_loss``, ``val_dice_mean``, ``val_dice_<name>`` (``val_dice_<domain>_<name>`` for several domains)."""
    out: dict[str, float] = {}
    losses, means = [], []
    for dom in domains:
        if dom.val_ds is None:
            continue
        per_case = []
        values = torch.as_tensor(list(dom.info.labels.values()))
        for item in dom.val_ds:
            image = convert_to_tensor(item["image"], track_meta=False)[None]
            logits = predict_logits(model, image, cfg, device, domain=dom.name or None)
            lab = convert_to_tensor(item["label"], track_meta=False)[0]
            if dom.regions:
                ref_values = lab.round().long()
                target = labels_to_regions(ref_values, dom.regions)[None]
                pred = torch.sigmoid(logits[0].float()) > 0.5
            else:
                ref_values = values[lab.round().long()]
                target = lab[None, None]
                pred = masks_of(values[logits.argmax(1)[0]], dom.structs)
            with torch.no_grad():
                losses.append(float(loss_fn(logits, target, image)))
            per_case.append(case_metrics(pred, masks_of(ref_values, dom.structs), list(dom.structs), hd95=False))
        per = [_nanmean([row[f"dice_{n}"] for row in per_case]) for n in dom.structs]
        dmean = _nanmean(per)
        means.append(dmean)
        if multi:
            out[f"val_dice_{dom.prefix}mean"] = dmean
        out.update({f"val_dice_{dom.prefix}{n}": v for n, v in zip(dom.structs, per)})
    out["val_loss"] = float(np.mean(losses)) if losses else float("nan")
    out["val_dice_mean"] = _nanmean(means)
    return out


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if np.any(np.isfinite(v)) else float("nan")


def final_validation(model: torch.nn.Module, cfg: Config, domains: Iterable[Any], run_dir: Path,
                     device: torch.device, mirror_axes: tuple[int, ...], multi: bool) -> Path | None:
    """Segment every validation case from its files as ``medseg3d infer`` does (no TTA), write the label maps to
    ``RUN/validation/[DOMAIN/]CASE.nii.gz`` and score them against their reference files in each case's own
    geometry (Dice and HD95 per class or region, as ``medseg3d evaluate``) into ``RUN/validation_metrics.csv``.
    Prints the mean row. Returns the table's path (None without validation cases)."""
    rows: list[dict] = []
    was_training = model.training
    try:
        for dom in domains:
            if not dom.val_cases:
                continue
            head = Head(list(dom.info.channels), dict(dom.info.labels), dom.regions, dom.name or None)
            seg = Segmenter(model, cfg, head.channels, head.labels, device=device, regions=head.regions,
                            domain=head.domain, mirror_axes=mirror_axes)
            out_dir = run_dir / "validation" / dom.name if multi else run_dir / "validation"
            for case in dom.val_cases:
                scan = read_scan(case["image"], channels=len(head.channels), allow_2d=cfg.model.spatial_dims == 2)
                pred = seg.segment(scan)
                path = write_image(pred.labels, scan, out_dir / f"{case['id']}.nii.gz")
                metrics = score_files(path, Path(case["label"]), dom.structs)
                rows.append({"case": case["id"], **({"domain": dom.name} if multi else {}),
                             **{k.replace("_", f"_{dom.prefix}", 1): v for k, v in metrics.items()}})
    finally:
        model.train(was_training)
    if not rows:
        return None
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("case", "domain")))
    keys = [k for k in keys if k.startswith("dice")] + [k for k in keys if not k.startswith("dice")]
    rows = [{"case": r["case"], **({"domain": r["domain"]} if multi else {}),
             **{k: r.get(k, float("nan")) for k in keys}} for r in rows]
    path = write_table(rows, run_dir / "validation_metrics.csv", ("domain",) if multi else ())
    mean = summarise(rows, keys)[0]
    print("final validation, in each case's own geometry (mean over cases): " + ", ".join(
        f"{k} {v:.3f}" for k, v in mean.items() if k != "case"), flush=True)
    return path
