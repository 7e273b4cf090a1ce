"""Postprocessing of a label map on the scan's own grid (sizes in ml from the scan's voxel volume), in the
order of :class:`~medseg3d.config.PostprocessConfig`: remove small components, keep the largest component,
fill holes, relabel a too-small class (BraTS: enhancing tumour -> necrosis). Connected components are
26-connected, the same as the report counts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..config import PostprocessConfig
from ..errors import MedsegError

STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a boolean mask: ``(component map, sizes in voxels of components 1..n)``."""
    comp, n = ndimage.label(mask, structure=STRUCTURE)
    return comp, np.bincount(comp.ravel(), minlength=n + 1)[1:]


def remove_small_components(labels: np.ndarray, values, min_voxels: float) -> np.ndarray:
    out = labels.copy()
    for v in values:
        comp, sizes = components(labels == v)
        small = np.flatnonzero(sizes < min_voxels) + 1
        out[np.isin(comp, small)] = 0
    return out


def keep_largest_component(labels: np.ndarray, values) -> np.ndarray:
    out = labels.copy()
    for v in values:
        comp, sizes = components(labels == v)
        if sizes.size > 1:
            out[(comp > 0) & (comp != np.argmax(sizes) + 1)] = 0
    return out


def fill_holes(labels: np.ndarray, values) -> np.ndarray:
    """Background voxels enclosed by a class become that class (voxels of other classes are left alone)."""
    out = labels.copy()
    for v in values:
        out[ndimage.binary_fill_holes(labels == v) & (out == 0)] = v
    return out


def relabel_small_class(labels: np.ndarray, source: int, target: int, min_voxels: float) -> np.ndarray:
    out = labels.copy()
    mask = labels == source
    if 0 < mask.sum() < min_voxels:
        out[mask] = target
    return out


def postprocess(labels: np.ndarray, cfg: PostprocessConfig, names: dict[str, int],
                voxel_volume_mm3: float) -> np.ndarray:
    """Apply the configured steps to ``labels`` (X, Y, Z, file values); ``names`` maps class names to values."""
    fg = [v for v in names.values() if v != 0]
    per_ml = 1000.0 / voxel_volume_mm3  # voxels per ml
    if cfg.min_component_ml > 0:
        labels = remove_small_components(labels, fg, cfg.min_component_ml * per_ml)
    if cfg.largest_component:
        labels = keep_largest_component(labels, fg)
    if cfg.fill_holes:
        labels = fill_holes(labels, fg)
    if cfg.relabel is not None:
        r = cfg.relabel
        for key in (r.source, r.target):
            if key not in names:
                raise MedsegError(f"postprocess.relabel: unknown class '{key}'; the model's classes are "
                                  f"{', '.join(names)}")
        labels = relabel_small_class(labels, names[r.source], names[r.target], r.below_ml * per_ml)
    return labels
