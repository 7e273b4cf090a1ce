"""Overlap metrics on label maps."""

from __future__ import annotations

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
