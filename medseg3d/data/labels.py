"""Labels and regions: the label <-> region mapping on arrays (the conventions live in
:mod:`medseg3d.config.labels`).

A *region* is a named set of label values (BraTS: whole tumour WT = {1, 2, 4}, tumour core TC = {1, 4},
enhancing tumour ET = {4}). Region-based training predicts one sigmoid mask per region; writing back, the
regions are painted in their configured order (as nnU-Net's region-based BraTS training does): every voxel of a
region gets the region's *write value*, the one label value of the region that no later region contains
(WT − TC → 2, TC − ET → 1, ET → 4). So nested regions become the BraTS labels again.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ..config.labels import BRATS_CONVENTIONS, brats_labels, brats_regions, region_write_values  # noqa: F401


def labels_to_regions(label: np.ndarray | torch.Tensor, regions: Mapping[str, Sequence[int]]):
    """A label map (..., X, Y, Z) of file values -> region masks stacked on a new first axis (R, ..., X, Y, Z),
    the input's type (numpy bool / torch float)."""
    if isinstance(label, torch.Tensor):  # one table lookup per voxel (3x faster than an isin per region)
        hi = max([int(x) for v in regions.values() for x in v] + [0]) + 1
        lut = torch.zeros(len(regions), hi + 1, dtype=torch.float32, device=label.device)
        for r, v in enumerate(regions.values()):
            lut[r, [int(x) for x in v]] = 1.0
        lab = label.long()
        return lut[:, torch.where((lab < 0) | (lab > hi), hi, lab)]
    label = np.asarray(label)
    return np.stack([np.isin(label, list(v)) for v in regions.values()])


def regions_to_labels(masks: np.ndarray, regions: Mapping[str, Sequence[int]], dtype=np.uint8) -> np.ndarray:
    """Region masks (R, X, Y, Z) (booleans, or probabilities thresholded at 0.5) -> a label map of file values,
    painting the regions in order with their write values."""
    masks = np.asarray(masks)
    if masks.dtype != bool:
        masks = masks > 0.5
    values = region_write_values(regions)
    out = np.zeros(masks.shape[1:], dtype=dtype)
    for m, name in zip(masks, regions):
        out[m] = values[name]
    return out
