"""Recipes -> MONAI ``Compose``.

One deterministic preprocessing definition serves training, validation and inference (the checkpoint carries
the config it is built from): load -> orient -> resample -> crop to foreground -> z-score. It is invertible
(MONAI records each spatial step on the MetaTensor), so predictions go back to the scan's own grid.
Random patch sampling and augmentation come after the cache.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from ..config import Config
from ..errors import MedsegError
from ..io.readers import read_image, read_scan
from ..io.scan import Scan
from .check import LABEL_NOT_INTEGER, label_channels_message, label_geometry_message, label_values_message


def nonzero(x):
    """Foreground for cropping: any channel nonzero."""
    return x != 0


def scan_to_metatensor(scan: Scan) -> MetaTensor:
    affine = torch.as_tensor(scan.affine, dtype=torch.float64)
    meta = {"affine": affine, "original_affine": affine.clone(), "spatial_shape": np.asarray(scan.shape),
            "filename_or_obj": scan.sources[0] if scan.sources else "array", "space": "RAS"}
    return MetaTensor(torch.from_numpy(scan.data), meta=meta)


class LoadCased(mt.MapTransform):
    """Read ``image`` (list of per-channel files or one 4D file) and ``label`` (NIfTI, NRRD or MHA) with
    medseg3d's reader, so training and inference read scans the same way. The label must be a 3D integer map
    on the image's grid; with ``label_values``, a label holding any other value is an error naming the file
    (e.g. BraTS 2023's 3 under the 2018 convention). The errors read as those of ``medseg3d check``
    (:mod:`medseg3d.data.check`)."""

    def __init__(self, keys: Sequence[Hashable] = ("image", "label"), channels: int | None = None,
                 allow_missing_keys: bool = True, label_values: Sequence[int] | None = None,
                 allow_2d: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.channels = channels
        self.allow_2d = allow_2d  # single-slice images (a 2D model's training data)
        self.label_values = None if label_values is None else {int(v) for v in label_values}

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        scan = read_scan(d["image"], channels=self.channels, allow_2d=self.allow_2d)
        d["image"] = scan_to_metatensor(scan)
        if "label" in self.keys and d.get("label"):
            lab = self.read_label(d["label"], scan)
            d["label"] = MetaTensor(torch.from_numpy(lab[None].astype(np.float32)), meta=dict(d["image"].meta))
        return d

    def read_label(self, path, scan: Scan) -> np.ndarray:
        """The label map (X, Y, Z) int32 of ``path``, checked against the scan and ``label_values``."""
        lab = read_image(path, allow_2d=True)  # a label follows its image
        if lab.data.shape[0] != 1:
            raise MedsegError(f"{path}: {label_channels_message(lab.data.shape[0], lab.shape)}")
        msg = label_geometry_message(lab.shape, lab.affine, scan.shape, scan.affine, scan.sources[0])
        if msg:
            raise MedsegError(f"{path}: {msg}")
        data = lab.data[0]
        if not np.array_equal(data, np.round(data)):
            raise MedsegError(f"{path}: {LABEL_NOT_INTEGER}")
        data = data.astype(np.int32)
        if self.label_values is not None:
            extra = sorted(set(np.unique(data).tolist()) - self.label_values)
            if extra:
                raise MedsegError(f"{path}: {label_values_message(extra, sorted(self.label_values))}")
        return data


def preprocess_transforms(cfg: Config, label_values: Sequence[int] | None = None,
                          keys: Sequence[str] = ("image", "label")) -> list:
    """The deterministic, invertible preprocessing (no loading). ``label_values`` (file values in class order)
    maps labels to class indices 0..C-1 when given."""
    p = cfg.preprocess
    has_label = "label" in keys
    modes = ("bilinear", "nearest") if has_label else ("bilinear",)
    out: list = [mt.Orientationd(keys=list(keys), axcodes=p.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if p.spacing is not None:
        out.append(mt.Spacingd(keys=list(keys), pixdim=p.spacing, mode=modes))
    if p.crop_foreground:
        out.append(mt.CropForegroundd(keys=list(keys), source_key="image", select_fn=nonzero, allow_smaller=True,
                                      start_coord_key=None, end_coord_key=None))  # no per-case arrays: cached and
        # fresh cases must collate into one batch
    if p.normalize == "ct":
        from .normalization import CTNormalized

        out.append(CTNormalized(keys="image", stats=[s.model_dump() for s in p.intensity_stats]))
    elif p.normalize != "none":
        out.append(mt.NormalizeIntensityd(keys="image", nonzero=p.normalize == "zscore_nonzero", channel_wise=True))
    if has_label and label_values is not None and list(label_values) != list(range(len(label_values))):
        out.append(mt.MapLabelValued(keys="label", orig_labels=list(label_values),
                                     target_labels=list(range(len(label_values)))))
    out.append(mt.EnsureTyped(keys=list(keys), dtype=torch.float32))
    return out


class LabelToRegionsd(mt.MapTransform):
    """A label map of file values (1, *spatial) -> region masks (R, *spatial), float 0/1."""

    def __init__(self, keys, regions: Mapping[str, Sequence[int]]):
        super().__init__(keys)
        self.regions = {k: list(v) for k, v in regions.items()}

    def __call__(self, data: Mapping) -> dict:
        from .labels import labels_to_regions

        d = dict(data)
        for key in self.key_iterator(d):
            lab = torch.as_tensor(d[key])
            masks = labels_to_regions(lab[0].round().long(), self.regions)
            d[key] = MetaTensor(masks, meta=d[key].meta) if isinstance(d[key], MetaTensor) else masks
        return d


#: the elastic displacement field is computed this many times coarser than the patch, then upsampled
ELASTIC_COARSE = 4


class RandSpatialToPatchd(mt.RandomizableTransform, mt.MapTransform):
    """3D spatial augmentation of a sampled region down to the patch in (at most) one resampling: rotation
    and/or scaling with probability ``max(rotate_prob, scale_prob)``, elastic deformation with
    ``elastic_prob`` (independently; both in one elastic resampling with the rotation and scaling folded in).
    When neither fires the patch is the region's centre crop: MONAI's RandAffined / Rand3DElasticd would resample
    an identity grid instead, which costs as much as a real deformation (measured: elastic resampling took
    0.32 of the 0.40 s that augmenting one 128³ brats_nnn patch took on one core) and, where region and patch
    differ by an odd number of voxels, samples half-way between voxels (a blur).

    The elastic displacement is MONAI's (uniform noise smoothed by a Gaussian of ``sigma`` voxels, times the
    magnitude, then MONAI's affine grid and resampler) computed on a grid :data:`ELASTIC_COARSE` times coarser
    (noise smoothed by ``sigma / ELASTIC_COARSE``, scaled by ``ELASTIC_COARSE ** -1.5`` so its spread is the
    fine field's) and upsampled trilinearly: with sigma >= 9 voxels the field is smooth at that scale, and the
    smoothing no longer dominates the cost of a patch."""

    def __init__(self, keys: Sequence[str], patch: Sequence[int], rotate_prob: float, scale_prob: float,
                 rotate_range: float, scale_range: float, elastic_prob: float = 0.0,
                 elastic_sigma: Sequence[float] = (9.0, 13.0), elastic_magnitude: Sequence[float] = (0.0, 900.0)):
        mt.MapTransform.__init__(self, keys)
        mt.RandomizableTransform.__init__(self, prob=1.0)
        self.affine_prob = max(rotate_prob, scale_prob)
        self.elastic_prob = elastic_prob
        rot = [rotate_range] * 3 if rotate_prob > 0 else None
        scale = [scale_range] * 3 if scale_prob > 0 else None
        modes = ("bilinear", "nearest")
        self.crop = mt.CenterSpatialCropd(keys, roi_size=list(patch))
        self.affine = mt.RandAffined(keys, prob=1.0, rotate_range=rot, scale_range=scale, spatial_size=list(patch),
                                     mode=modes, padding_mode="zeros")
        self.patch, self.modes = list(patch), modes
        self.elastic = mt.Rand3DElastic(prob=1.0, sigma_range=tuple(elastic_sigma),
                                        magnitude_range=tuple(elastic_magnitude), spatial_size=list(patch),
                                        padding_mode="zeros")
        self.elastic_affine = mt.Rand3DElastic(prob=1.0, sigma_range=tuple(elastic_sigma),
                                               magnitude_range=tuple(elastic_magnitude), rotate_range=rot,
                                               scale_range=scale, spatial_size=list(patch), padding_mode="zeros")
        self._fire = (False, False)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for i, t in enumerate((self.affine, self.elastic, self.elastic_affine)):
            t.set_random_state(seed=None if seed is None else seed + 1 + i,
                               state=None if state is None else np.random.RandomState(state.randint(2 ** 31)))
        return self

    def randomize(self, data=None) -> None:
        self._fire = (self.R.rand() < self.affine_prob, self.R.rand() < self.elastic_prob)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        self.randomize()
        affine, elastic = self._fire
        if elastic:
            return self._elastic(data, self.elastic_affine if affine else self.elastic)
        if affine:
            return self.affine(data)
        return self.crop(data)

    def elastic_field(self, t: mt.Rand3DElastic) -> torch.Tensor:
        """A new random displacement field (3, *patch) in voxels (``t``'s random state; also draws its affine)."""
        from monai.networks.layers import GaussianFilter

        f = ELASTIC_COARSE
        t.randomize(grid_size=[max(2, -(-n // f)) for n in self.patch])
        noise = torch.as_tensor(t.rand_offset).unsqueeze(0)
        smooth = GaussianFilter(spatial_dims=3, sigma=t.sigma / f, truncated=3.0)(noise)
        field = torch.nn.functional.interpolate(smooth, size=self.patch, mode="trilinear", align_corners=True)[0]
        return field * (t.magnitude * f ** -1.5)

    def _elastic(self, data: Mapping[Hashable, torch.Tensor], t: mt.Rand3DElastic) -> dict:
        from monai.transforms.utils import create_grid

        d = dict(data)
        grid = create_grid(spatial_size=self.patch, backend="torch")
        grid[:3] += self.elastic_field(t)
        grid = t.rand_affine_grid(grid=grid)
        for key, mode in zip(self.keys, self.modes):
            d[key] = t.resampler(d[key], grid, mode=mode, padding_mode="zeros")
        return d


def augment_transforms(cfg: Config, regions: Mapping[str, Sequence[int]] | None = None) -> list:
    """Random patch sampling (with foreground oversampling) and augmentation, applied after the cache.

    Spatial augmentation (rotation, scaling, elastic deformation) never warps the whole volume: in 3D a region
    ``augment.crop_margin`` times the patch is cropped first and :class:`RandSpatialToPatchd` resamples it to
    the patch (keeping the centre, so the corners a rotation brings in come from real image, not padding), or
    crops the patch from its centre when no spatial transform fires. With ``regions`` the label becomes region
    masks (R channels) at the end."""
    if cfg.model.spatial_dims == 2:  # 2D/2.5D samples slices from the same cached volumes
        from .slices import slice_sampling_transforms

        return slice_sampling_transforms(cfg) + augmentation(cfg, spatial_dims=2, regions=regions)
    t, a = cfg.train, cfg.train.augment
    keys = ["image", "label"]
    spatial = a.rotate_prob > 0 or a.scale_prob > 0 or a.elastic_prob > 0
    region = [int(math.ceil(p * a.crop_margin)) for p in t.patch_size] if spatial else list(t.patch_size)
    return [
        mt.SpatialPadd(keys=keys, spatial_size=region),
        mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=region,
                                  pos=t.fg_oversample, neg=1.0 - t.fg_oversample, num_samples=1),
    ] + augmentation(cfg, spatial_dims=3, regions=regions)


def augmentation(cfg: Config, spatial_dims: int, regions: Mapping[str, Sequence[int]] | None = None) -> list:
    """The augmentation recipe on sampled patches of ``spatial_dims`` axes (rotation is one in-plane angle in
    2D, one per axis in 3D), ending with plain float tensors. In 3D the input is the larger sampled region and
    the output the patch (RandAffined / Rand3DElasticd resample to ``spatial_size`` whether they fire or not);
    in 2D the input already has the patch size (no elastic deformation there)."""
    a = cfg.train.augment
    keys = ["image", "label"]
    patch = list(cfg.train.patch_size) if spatial_dims == 3 else None
    affine = a.rotate_prob > 0 or a.scale_prob > 0
    elastic = a.elastic_prob > 0 and spatial_dims == 3
    out: list = []
    if spatial_dims == 3 and (affine or elastic):
        out.append(RandSpatialToPatchd(keys, patch, a.rotate_prob, a.scale_prob, a.rotate_range, a.scale_range,
                                       a.elastic_prob if elastic else 0.0, a.elastic_sigma, a.elastic_magnitude))
    elif affine:
        out.append(mt.RandAffined(keys=keys, prob=max(a.rotate_prob, a.scale_prob),
                                  rotate_range=[a.rotate_range] * (1 if spatial_dims == 2 else 3)
                                  if a.rotate_prob > 0 else None,
                                  scale_range=[a.scale_range] * spatial_dims if a.scale_prob > 0 else None,
                                  spatial_size=None if elastic else patch,
                                  mode=("bilinear", "nearest"), padding_mode="zeros"))
    elif elastic:
        out.append(mt.Rand3DElasticd(keys=keys, prob=a.elastic_prob, sigma_range=tuple(a.elastic_sigma),
                                     magnitude_range=tuple(a.elastic_magnitude), spatial_size=patch,
                                     mode=("bilinear", "nearest"), padding_mode="zeros"))
    if a.flip_prob > 0:
        out += [mt.RandFlipd(keys=keys, prob=a.flip_prob, spatial_axis=ax) for ax in range(spatial_dims)]
    if a.intensity_prob > 0:
        out += [mt.RandScaleIntensityd(keys="image", factors=a.intensity_scale, prob=a.intensity_prob),
                mt.RandShiftIntensityd(keys="image", offsets=a.intensity_shift, prob=a.intensity_prob)]
    if a.gamma_prob > 0:
        out.append(mt.RandAdjustContrastd(keys="image", gamma=tuple(a.gamma_range), prob=a.gamma_prob))
    if a.noise_prob > 0:
        out.append(mt.RandGaussianNoised(keys="image", prob=a.noise_prob, std=0.1))
    if regions:
        out.append(LabelToRegionsd(keys="label", regions=regions))
    out.append(mt.EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False))
    return out
