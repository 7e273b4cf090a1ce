"""CT normalisation as nnU-Net's ``CTNormalization``: per channel, clip to the dataset's foreground
[p0.5, p99.5] and z-score with the dataset's foreground mean and standard deviation (all from the
fingerprint), so every CT is scaled alike (Hounsfield units are calibrated; a per-image z-score would undo
that). MRI keeps the per-image z-score (``preprocess.normalize: zscore_nonzero | zscore``).

The planner proposes it as ``preprocess.normalize: ct`` with ``preprocess.intensity_stats`` (one
``{lower, upper, mean, std}`` per channel); preprocessing then appends :class:`CTNormalized` instead of MONAI's
``NormalizeIntensityd``.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor


def ct_normalize(x, stats: Sequence[Mapping[str, float]]):
    """(C, *spatial) array or tensor -> clipped and z-scored per channel: ``(clip(x_c, lower_c, upper_c) -
    mean_c) / max(std_c, 1e-8)``; returns the same kind (float32)."""
    if len(stats) != x.shape[0]:
        raise ValueError(f"{len(stats)} channel statistics for an image with {x.shape[0]} channels")
    if isinstance(x, torch.Tensor):
        out = x.to(torch.float32).clone()
        for c, s in enumerate(stats):
            out[c] = (out[c].clamp(s["lower"], s["upper"]) - s["mean"]) / max(s["std"], 1e-8)
        return out
    out = np.asarray(x, dtype=np.float32).copy()
    for c, s in enumerate(stats):
        out[c] = (np.clip(out[c], s["lower"], s["upper"]) - s["mean"]) / max(s["std"], 1e-8)
    return out


class CTNormalized(mt.MapTransform):
    """:func:`ct_normalize` on ``keys`` (metadata kept)."""

    def __init__(self, keys: Sequence[Hashable], stats: Sequence[Mapping[str, float]],
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.stats = [dict(s) for s in stats]

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            y = ct_normalize(x.as_tensor() if isinstance(x, MetaTensor) else x, self.stats)
            d[key] = MetaTensor(y, meta=x.meta, applied_operations=x.applied_operations) \
                if isinstance(x, MetaTensor) else y
        return d
