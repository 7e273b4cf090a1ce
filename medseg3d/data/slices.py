"""2D models on volumes: which axis slices are cut across, 2.5D context as channels, and the training-side
transforms.

One loader serves 2D and 3D (as in nnU-Net: a 2D patch is a 3D patch with a singleton axis). The cached 3D
preprocessing is the same; only patch sampling differs:

1. the volume is padded by ``k = model.context_slices`` slices at each end of the slice axis by *replication*
   (the first and last slices are repeated), so every real slice can be a patch centre;
2. ``RandCropByPosNegLabeld`` (the same foreground oversampling as 3D) crops a 3D patch of size ``2k + 1``
   along the slice axis and ``train.patch_size`` in-plane;
3. :class:`SlicesToChannelsd` moves the slice axis into the channels, channel-major: input channel ``c`` at
   offset ``o`` (``-k..k``) is channel ``c * (2k + 1) + o + k``; the label keeps the centre slice only;
4. 2D augmentation (in-plane rotation/scaling, mirroring of the two in-plane axes, intensity, noise).

Inference (:mod:`medseg3d.inference.slices`) builds the same stacks with the same replication at the borders.

Config: ``model.spatial_dims: 2``, ``model.slice_axis: auto|0|1|2`` (an axis of the volume *after*
preprocessing, i.e. in ``preprocess.orientation``), ``model.context_slices: k``. ``train.patch_size`` is the
in-plane size (two numbers, the remaining axes in order) or three numbers with 1 along the slice axis.
``auto`` is the axis with the coarsest spacing: ``preprocess.spacing`` when set, else the median spacing of
the training cases (after reorientation); ties go to the last such axis (the axial one for RAS/LPS). The
trainer writes the resolved axis and the two-number patch size into the run's config and checkpoints, so
inference never re-derives them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.utils import convert_to_tensor

from ..config import check_patch_2d
from ..errors import MedsegError

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from .datasets import DatasetInfo


# ---- config ---------------------------------------------------------------------------------------------------
def coarsest_axis(spacing: Sequence[float], rtol: float = 1e-3) -> int:
    """The axis with the largest spacing; ties (within ``rtol``) go to the last such axis."""
    s = np.asarray(spacing, float)
    return int(np.nonzero(s >= s.max() * (1 - rtol))[0][-1])


def median_spacing(cases: Sequence[dict], orientation: str) -> list[float]:
    """Median voxel spacing of the cases' images, per axis after reorientation to ``orientation``."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    target = axcodes2ornt(tuple(orientation))
    rows = []
    for case in cases:
        img = case["image"]
        path = img[0] if isinstance(img, (list, tuple)) else img
        affine = nib.load(str(path)).affine
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        transform = ornt_transform(io_orientation(affine), target)
        out = np.zeros(3)
        for src, (dst, _) in enumerate(transform):
            out[int(dst)] = zooms[src]
        rows.append(out)
    if not rows:
        raise MedsegError("model.slice_axis 'auto' needs training cases or preprocess.spacing to choose an axis")
    return [float(v) for v in np.median(np.array(rows), axis=0)]


def slice_axis(cfg: "Config") -> int:
    """The resolved slice axis of a 2D config; ``auto`` resolves against ``preprocess.spacing`` only (the
    trainer resolves it against the dataset when the spacing is null and records the result)."""
    axis = cfg.model.slice_axis
    if axis != "auto":
        return int(axis)
    if cfg.preprocess.spacing is None:
        raise MedsegError("model.slice_axis is 'auto' and preprocess.spacing is null: the axis depends on the data; "
                          "set model.slice_axis to 0, 1 or 2 (a trained checkpoint records the resolved axis)")
    return coarsest_axis(cfg.preprocess.spacing)


def patch_2d(cfg: "Config", axis: int | None = None) -> list[int]:
    """The in-plane patch size (the two axes other than the slice axis, in order)."""
    p = list(cfg.train.patch_size)
    if len(p) == 2:
        return p
    axis = slice_axis(cfg) if axis is None else axis
    return [s for i, s in enumerate(p) if i != axis]


def patch_3d(cfg: "Config", axis: int | None = None) -> list[int]:
    """The 3D crop a 2D/2.5D training sample is cut from: ``2k + 1`` along the slice axis."""
    axis = slice_axis(cfg) if axis is None else axis
    p = patch_2d(cfg, axis)
    p.insert(axis, 2 * cfg.model.context_slices + 1)
    return p


def model_in_channels(cfg: "Config", n_channels: int) -> int:
    """Input channels of the network: each image channel once per slice of the 2.5D stack."""
    if cfg.model.spatial_dims == 2:
        return n_channels * (2 * cfg.model.context_slices + 1)
    return n_channels


def resolve_slices(cfg: "Config", info: "DatasetInfo | None" = None) -> "Config":
    """A copy of a 2D config with ``model.slice_axis`` an integer and ``train.patch_size`` the in-plane size;
    a 3D config is returned as it is."""
    if cfg.model.spatial_dims != 2:
        return cfg
    axis = cfg.model.slice_axis
    if axis == "auto":
        if cfg.preprocess.spacing is not None:
            axis = coarsest_axis(cfg.preprocess.spacing)
        else:
            if info is None:
                raise MedsegError("model.slice_axis 'auto' with preprocess.spacing null needs the dataset")
            axis = coarsest_axis(median_spacing(info.training, cfg.preprocess.orientation))
    try:
        check_patch_2d(cfg.train.patch_size, int(axis))
    except ValueError as e:
        raise MedsegError(f"{e} (model.slice_axis 'auto' resolved to {axis})") from None
    out = cfg.model_copy(deep=True)
    out.model.slice_axis = int(axis)
    out.train.patch_size = patch_2d(cfg, int(axis))
    return out


# ---- 2.5D stacks ----------------------------------------------------------------------------------------------
def context_indices(n_slices: int, k: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """(S, 2k+1) indices of slice ``s``'s neighbours ``s-k..s+k``, clamped to the volume (replication at the
    borders), for ``s`` in ``start..stop``."""
    stop = n_slices if stop is None else stop
    centres = torch.arange(start, stop)[:, None]
    return (centres + torch.arange(-k, k + 1)[None]).clamp(0, n_slices - 1)


def stack_slices(vol: torch.Tensor, k: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Slices ``start..stop`` of ``vol`` (N, C, S, A, B) as 2.5D inputs (N·(stop-start), C·(2k+1), A, B),
    channel-major (channel ``c`` at offset ``o`` is ``c·(2k+1) + o + k``), batch ordered case-major."""
    n, c, s, a, b = vol.shape
    idx = context_indices(s, k, start, stop).to(vol.device)  # (S', 2k+1)
    x = vol[:, :, idx]                                       # (N, C, S', 2k+1, A, B)
    return x.permute(0, 2, 1, 3, 4, 5).reshape(n * idx.shape[0], c * (2 * k + 1), a, b)


# ---- training transforms --------------------------------------------------------------------------------------
class SlicesToChannelsd(mt.MapTransform):
    """(C, X, Y, Z) patches with ``2k + 1`` along ``axis`` -> 2D samples: the image's slices become channels
    (C·(2k+1), A, B), channel-major; the label keeps its centre slice (1, A, B). Outputs are plain tensors."""

    def __init__(self, axis: int, k: int, image_key: Hashable = "image", label_key: Hashable = "label"):
        super().__init__([image_key, label_key], allow_missing_keys=True)
        self.axis, self.k = axis, k
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        img = convert_to_tensor(d[self.image_key], track_meta=False)
        if img.ndim != 4 or img.shape[1 + self.axis] != 2 * self.k + 1:
            raise ValueError(f"expected (C, X, Y, Z) with {2 * self.k + 1} along axis {self.axis}, got {tuple(img.shape)}")
        img = img.movedim(1 + self.axis, 1)
        d[self.image_key] = img.reshape(img.shape[0] * img.shape[1], *img.shape[2:])
        if self.label_key in d:
            lab = convert_to_tensor(d[self.label_key], track_meta=False).movedim(1 + self.axis, 1)
            d[self.label_key] = lab[:, self.k]
        return d




def slice_sampling_transforms(cfg: "Config") -> list:
    """Pad the slice axis by replication, crop a (2k+1)-slice 3D patch with foreground oversampling, and move
    the slices into channels (no augmentation)."""
    t, k = cfg.train, cfg.model.context_slices
    axis = slice_axis(cfg)
    keys = ["image", "label"]
    size = patch_3d(cfg, axis)
    out: list = []
    if k:
        border = [0] * 6
        border[2 * axis] = border[2 * axis + 1] = k
        out.append(mt.BorderPadd(keys=keys, spatial_border=border, mode="replicate"))
    out += [
        mt.SpatialPadd(keys=keys, spatial_size=size),
        mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=size,
                                  pos=t.fg_oversample, neg=1.0 - t.fg_oversample, num_samples=1),
        SlicesToChannelsd(axis, k),
    ]
    return out
