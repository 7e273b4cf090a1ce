"""Seeded BraTS-like MRI phantoms and writers for the dataset layouts medseg3d reads.

The phantom
-----------
Anatomy is defined in world millimetres (RAS+, origin at the centre of the grid), so the same seed gives the
same head on any grid; the voxel grid only samples it. From the outside in:

- **head**: an ellipsoid (about 140 x 176 x 150 mm, jittered per seed) whose outer shell is **scalp**
  (fat/skin) and, under it, **skull** (bone);
- **CSF** fills the space between the skull and the brain;
- **brain**: a smaller ellipsoid whose radius is deformed by a smooth random function of direction; its outer
  ribbon (with a randomly folded inner boundary) is **grey matter**, the inside **white matter**;
- **ventricles**: two smooth, slightly deformed CSF blobs either side of the midline near the centre;
- **tumour**, at a random place inside the brain: an irregular **edema** blob (BraTS label 2, spreading less
  into grey matter) that surrounds a tumour core made of an **enhancing** shell of uneven thickness
  (label 4) around a **necrotic** centre (label 1). Size, position and shape vary with the seed; the core
  keeps a margin from the brain surface and is wrapped in at least 8 mm of edema, except where it abuts a
  ventricle (the tumour displaces brain tissue only; the ventricles stay CSF).

Each tissue has a contrast per channel as in real MRI: T1 (WM > GM > CSF, tumour hypointense), T1ce (as T1,
with a bright enhancing rim), T2 (CSF and edema bright) and FLAIR (edema bright, CSF suppressed). The image gets
a mild tissue texture, partial-volume blur, a smooth multiplicative bias field per channel and Rician noise;
everything outside the head is exactly 0, so a ``nonzero`` foreground mask works. Intensities are in
MRI-like units (roughly 0..1500).

Files
-----
:func:`to_nifti` stores an array (in the phantom's RAS voxel order) with a voxel spacing and a nibabel axis
code: the data are flipped/permuted so that the file truly is in that orientation while the anatomy stays put
in world space. Axis codes are nibabel's (the direction each voxel axis points *to*): ITK/DICOM "RAI" is
nibabel "LPS". The writers produce MSD, nnU-Net v2 raw and BraTS-folder datasets of such files.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Sequence, Union

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage

CHANNELS = ("T1", "T1ce", "T2", "FLAIR")
LABELS = {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}
TISSUES = ("background", "scalp", "skull", "csf", "ventricles", "grey_matter", "white_matter",
           "edema", "enhancing", "necrosis")
FOV_MM = 192.0  # default field of view per axis when no spacing is given
BRATS_SUFFIXES = ("t1", "t1ce", "t2", "flair")  # BraTS file suffixes, in CHANNELS order

_T = {name: i for i, name in enumerate(TISSUES)}
_TUMOUR_LABEL = {_T["edema"]: LABELS["edema"], _T["enhancing"]: LABELS["enhancing"],
                 _T["necrosis"]: LABELS["necrotic"]}
# Relative signal per tissue (rows: T1, T1ce, T2, FLAIR; columns: TISSUES order).
_CONTRAST = np.array([
    #  bg  scalp skull  csf  vent   GM    WM   edema  enh   necr
    [0.0, 0.90, 0.10, 0.25, 0.25, 0.55, 0.75, 0.45, 0.50, 0.20],  # T1
    [0.0, 0.90, 0.10, 0.25, 0.25, 0.58, 0.75, 0.45, 1.25, 0.20],  # T1ce
    [0.0, 0.55, 0.08, 1.00, 1.00, 0.60, 0.45, 0.85, 0.65, 0.95],  # T2
    [0.0, 0.60, 0.08, 0.12, 0.12, 0.60, 0.45, 1.00, 0.75, 0.35],  # FLAIR
], dtype=np.float32)
_SIGNAL_SCALE = 1000.0
_HEAD_AXES_MM = np.array([70.0, 88.0, 75.0])  # semi-axes along R, A, S
_SKULL_OUTER, _SKULL_INNER = 0.93, 0.88  # shell radii, as fractions of the head ellipsoid
_BRAIN_SCALE, _BRAIN_WOBBLE = 0.78, 0.025  # brain ellipsoid and its radial deformation (fractions of head)

Shape = Sequence[int]
Spacing = Union[Sequence[float], None]
Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------------- phantom
def _grid_spacing(shape: Shape, spacing: Spacing) -> tuple[float, float, float]:
    """Validated voxel spacing (mm); None gives the default field of view, ``FOV_MM / shape``."""
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 entries, got {tuple(shape)}")
    if spacing is None:
        return tuple(FOV_MM / n for n in shape)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers, got {tuple(spacing)}")
    return tuple(float(s) for s in spacing)


def _world_grid(shape: Shape, spacing: Sequence[float]) -> Coords:
    """Open-grid world coordinates (mm) of the voxel centres, centred on the grid centre."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(s) for n, s in zip(shape, spacing)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _random_waves(rng: np.random.Generator, wavelength: float, n_waves: int):
    """Wave vectors (n, 3) of the given wavelength in random directions, and complex amplitudes (random phase
    and size) scaled so that the sum of the ``n_waves`` cosines has about unit standard deviation."""
    k = rng.normal(size=(n_waves, 3))
    k *= (2 * math.pi / wavelength) / np.linalg.norm(k, axis=1, keepdims=True)
    phases = rng.uniform(0, 2 * math.pi, n_waves)
    amps = rng.normal(size=n_waves) * math.sqrt(2.0 / n_waves)
    return k.astype(np.float32), (amps * np.exp(1j * phases)).astype(np.complex64)


def _smooth_field(rng: np.random.Generator, coords: Coords, wavelength: float, n_waves: int = 12) -> np.ndarray:
    """A smooth random field (about unit standard deviation) at arbitrary points ``coords``: a sum of plane waves
    ``Re(c exp(i k.x))`` of the given wavelength (in the units of ``coords``)."""
    k, c = _random_waves(rng, wavelength, n_waves)
    out = np.zeros(np.broadcast_shapes(*(x.shape for x in coords)), dtype=np.float32)
    for (kx, ky, kz), ck in zip(k, c):
        out += np.float32(abs(ck)) * np.cos(kx * coords[0] + ky * coords[1] + kz * coords[2]
                                            + np.float32(np.angle(ck)))
    return out


def _smooth_grid_field(rng: np.random.Generator, grid: Coords, wavelength: float, n_waves: int = 12) -> np.ndarray:
    """:func:`_smooth_field` on an open grid, computed separably (each wave is an outer product of three 1D
    waves), which is much faster than evaluating the cosines voxel by voxel."""
    k, c = _random_waves(rng, wavelength, n_waves)
    x, y, z = (np.exp(1j * np.outer(k[:, i], g.ravel())).astype(np.complex64) for i, g in enumerate(grid))
    xy = (c[:, None, None] * x[:, :, None]) * y[:, None, :]  # (waves, X, Y)
    return np.tensordot(xy, z, axes=(0, 0)).real.astype(np.float32)


def _radial_level(rng: np.random.Generator, grid: Coords, centre: Sequence[float], axes: Sequence[float],
                  wobble: float, reach: float = 1.0, lobes: float = 1.5) -> np.ndarray:
    """Normalised ellipsoidal radius (< 1 inside) of an ellipsoid whose radius is scaled by
    ``1 + wobble * tanh(f(direction))``, f a smooth random function on the unit sphere. Only computed in the
    box where it can be below ``reach``; ``inf`` elsewhere."""
    half = np.asarray(axes) * (1 + wobble) * reach
    box = []
    for g, m, h in zip(grid, centre, half):
        inside = np.flatnonzero(np.abs(g.ravel() - m) <= h)
        box.append(slice(inside[0], inside[-1] + 1) if inside.size else slice(0, 0))
    u = [(g[(slice(None),) * i + (box[i],)] - m) / a for i, (g, m, a) in enumerate(zip(grid, centre, axes))]
    r = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + np.float32(1e-6)
    wave = _smooth_field(rng, (u[0] / r, u[1] / r, u[2] / r), lobes)  # drawn even for an empty box
    level = np.full(np.broadcast_shapes(*(g.shape for g in grid)), np.inf, dtype=np.float32)
    level[tuple(box)] = r / (1 + np.float32(wobble) * np.tanh(wave))
    return level


def phantom_tissues(shape: Shape = (64, 64, 64), seed: int = 0, spacing: Spacing = None) -> np.ndarray:
    """The phantom's tissue map: uint8 (X, Y, Z) in RAS voxel order, values index :data:`TISSUES`.

    ``spacing`` (mm along R, A, S) defaults to ``FOV_MM / shape`` (a 192 mm field of view)."""
    spacing = _grid_spacing(shape, spacing)
    rng = np.random.default_rng(seed)
    xyz = _world_grid(shape, spacing)

    head_axes = _HEAD_AXES_MM * rng.uniform(0.95, 1.05, 3)
    r_head = np.sqrt(sum((c / a) ** 2 for c, a in zip(xyz, head_axes)))
    brain_level = _radial_level(rng, xyz, (0, 0, 0), _BRAIN_SCALE * head_axes, _BRAIN_WOBBLE / _BRAIN_SCALE)
    brain = brain_level < 1
    grey = brain & (brain_level > 0.86 + 0.05 * _smooth_grid_field(rng, xyz, 14.0))
    ventricles = np.zeros(brain.shape, dtype=bool)
    for side in (-1, 1):
        centre = (side * rng.uniform(6, 9), rng.uniform(0, 8), rng.uniform(6, 12))
        ventricles |= _radial_level(rng, xyz, centre, rng.uniform(0.85, 1.15, 3) * (5, 18, 8), 0.2) < 1

    tissue = np.zeros(brain.shape, dtype=np.uint8)
    tissue[r_head < 1] = _T["scalp"]
    tissue[r_head < _SKULL_OUTER] = _T["skull"]
    tissue[r_head < _SKULL_INNER] = _T["csf"]
    tissue[brain] = _T["white_matter"]
    tissue[grey] = _T["grey_matter"]
    tissue[brain & ventricles] = _T["ventricles"]

    # Tumour: core radius r_core, enhancing shell of thickness `rim`, edema reaching r_edema from the centre.
    r_core, rim = rng.uniform(7, 12), rng.uniform(4, 7)
    r_tc = r_core + rim
    r_edema = r_tc + rng.uniform(6, 14)
    # The centre lies in a shrunken brain ellipsoid that keeps the core and an 8 mm edema margin inside the
    # brain, and off the midline (|x| at least half the room) so the tumour sits in one hemisphere.
    room = 0.96 * _BRAIN_SCALE * head_axes - 1.15 * r_tc - 10
    while True:
        v = rng.uniform(-1, 1, 3)
        if abs(v[0]) >= 0.5 and np.linalg.norm(v) <= 1:
            break
    centre = v * room
    tc_level = _radial_level(rng, xyz, centre, (r_tc,) * 3, 0.15, reach=1 + 8 / r_tc)
    core = tc_level < 1
    necrosis = tc_level + 0.04 * _smooth_grid_field(rng, xyz, 10.0) < r_core / r_tc
    edema_level = (_radial_level(rng, xyz, centre, (r_edema,) * 3, 0.2, reach=1.4)
                   + 0.1 * _smooth_grid_field(rng, xyz, 16.0) + 0.15 * grey)
    parenchyma = brain & ~ventricles  # the tumour displaces brain tissue but leaves the ventricles CSF
    tissue[parenchyma & ((edema_level < 1) | (tc_level < 1 + 8 / r_tc))] = _T["edema"]
    tissue[parenchyma & core] = _T["enhancing"]
    tissue[parenchyma & core & necrosis] = _T["necrosis"]
    return tissue


def tissues_to_label(tissue: np.ndarray) -> np.ndarray:
    """BraTS labels (uint8: 0, 1 necrotic, 2 edema, 4 enhancing) of a :func:`phantom_tissues` map."""
    lut = np.zeros(len(TISSUES), dtype=np.uint8)
    for t, value in _TUMOUR_LABEL.items():
        lut[t] = value
    return lut[tissue]


def make_brats_phantom(shape: Shape = (64, 64, 64), seed: int = 0, spacing: Spacing = None,
                       noise: float = 0.03, bias: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """A BraTS-like case: ``(image, label)``, image float32 (4, X, Y, Z) with channels T1, T1ce, T2, FLAIR in
    MRI-like units (0 outside the head), label uint8 (X, Y, Z) with BraTS values 0/1/2/4, both in RAS voxel
    order (axis 0 points right, 1 anterior, 2 superior).

    ``spacing`` (mm along R, A, S) defaults to ``FOV_MM / shape``; ``noise`` is the Rician noise level relative
    to the signal scale (1 = the brightest normal tissue, about 1000 in the output); ``bias`` the strength of
    the smooth multiplicative bias field (0 turns it off).
    """
    spacing = _grid_spacing(shape, spacing)
    tissue = phantom_tissues(shape, seed, spacing)
    rng = np.random.default_rng([seed, 1])  # a stream of its own: contrasts never shift the anatomy
    xyz = _world_grid(shape, spacing)
    head = tissue != _T["background"]

    texture = 1 + 0.04 * _smooth_grid_field(rng, xyz, 8.0)
    sigma_vox = [0.35 * min(spacing) / s for s in spacing]  # partial-volume blur, a third of the finest voxel
    image = np.empty((len(CHANNELS), *tissue.shape), dtype=np.float32)
    for c in range(len(CHANNELS)):
        channel = ndimage.gaussian_filter(_CONTRAST[c][tissue] * texture, sigma_vox)
        if bias:
            channel *= np.exp(np.float32(bias) * _smooth_grid_field(rng, xyz, 300.0, n_waves=6))
        if noise:
            n_re = rng.standard_normal(channel.shape, dtype=np.float32) * np.float32(noise)
            n_im = rng.standard_normal(channel.shape, dtype=np.float32) * np.float32(noise)
            channel = np.sqrt((channel + n_re) ** 2 + n_im ** 2)
        image[c] = channel * np.float32(_SIGNAL_SCALE)
    image[:, ~head] = 0
    return image, tissues_to_label(tissue)


# ----------------------------------------------------------------------------------------------------- NIfTI
def _rotation_about_x(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return rot


def _orientation(code: str) -> np.ndarray:
    """nibabel orientation array of a 3-letter axis code, or ValueError."""
    try:
        ornt = axcodes2ornt(tuple(str(code).upper()))
    except ValueError:
        ornt = None
    if ornt is None or len(code) != 3 or sorted(ornt[:, 0]) != [0, 1, 2]:
        raise ValueError(f"orientation must be a 3-letter axis code such as 'RAS' or 'LPS', got {code!r}")
    return ornt


def to_nifti(array: np.ndarray, spacing: Spacing, orientation: str = "RAS", oblique_deg: float = 0.0,
             dtype: Any = None) -> nib.Nifti1Image:
    """Store an array given in the phantom's RAS voxel order as a NIfTI image in ``orientation``.

    ``array`` is (X, Y, Z) or channel-first (C, X, Y, Z) (stored as a 4D (X', Y', Z', C) image); ``spacing``
    is the voxel size in mm along the array's (R, A, S) axes (None: ``FOV_MM / shape``). ``orientation`` is a
    nibabel axis code such as "RAS", "LPS" or "ASL": the voxel axes are flipped/permuted so that
    ``nibabel.aff2axcodes`` of the result gives that code, and the anatomy stays where it was in world space.
    ``oblique_deg`` tilts the grid about the left-right axis (keep it under 45 degrees so the axis code still
    holds). ``dtype`` converts the data (integer types are rounded and clipped to their range). The grid is
    centred on the world origin; qform and sform are both set, with code 1 (scanner).
    """
    data = np.asarray(array)
    if data.ndim == 4:
        data = np.moveaxis(data, 0, -1)
    elif data.ndim != 3:
        raise ValueError(f"expected a (X, Y, Z) or (C, X, Y, Z) array, got shape {data.shape}")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            data = np.clip(np.rint(data), info.min, info.max)
        data = data.astype(dtype)
    spacing = _grid_spacing(data.shape[:3], spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(data.shape[:3], spacing)]
    affine = _rotation_about_x(oblique_deg) @ affine
    target = _orientation(orientation)
    img = nib.Nifti1Image(data, affine).as_reoriented(ornt_transform(axcodes2ornt("RAS"), target))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


# --------------------------------------------------------------------------------------------------- writers
def _per_case(value: Any, n: int, what: str, is_single) -> list:
    """``value`` for every case: one value shared by all, or a sequence of exactly ``n`` values."""
    if is_single(value):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what}: give one value or {n} (one per case), got {len(values)}")
    return values


def _case_geometry(n: int, shape, spacing, orientation, oblique_deg) -> list[tuple]:
    """Per-case (shape, spacing, orientation, oblique_deg); each argument may be single or per case."""
    def is_triple(v):
        return v is None or (len(v) == 3 and all(isinstance(x, (int, float, np.number)) for x in v))
    shapes = _per_case(shape, n, "shape", is_triple)
    spacings = _per_case(spacing, n, "spacing", is_triple)
    orientations = _per_case(orientation, n, "orientation", lambda v: isinstance(v, str))
    obliques = _per_case(oblique_deg, n, "oblique_deg", lambda v: isinstance(v, (int, float, np.number)))
    return [(tuple(sh), _grid_spacing(sh, sp), o, ob)
            for sh, sp, o, ob in zip(shapes, spacings, orientations, obliques)]


def _cases(n: int, shape, spacing, orientation, oblique_deg, seed: int, prefix: str):
    """Per case: ``(index, case id, image, label NIfTI, store)``, with ``store(array)`` -> an int16 NIfTI image
    in the case's geometry. Case ``i`` is the phantom of seed ``seed * 10000 + i``."""
    for i, (sh, sp, orient, obl) in enumerate(_case_geometry(n, shape, spacing, orientation, oblique_deg)):
        image, label = make_brats_phantom(sh, seed * 10_000 + i, sp)
        store = functools.partial(to_nifti, spacing=sp, orientation=orient, oblique_deg=obl, dtype=np.int16)
        yield i, f"{prefix}_{i + 1:03d}", image, store(label, dtype=np.uint8), store


def _save(img: nib.Nifti1Image, path: Path, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    written.append(path)


def _write_json(meta: dict, path: Path, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")
    written.append(path)


def write_msd_dataset(root: str | Path, num_training: int = 4, num_test: int = 1, shape=(48, 48, 48),
                      spacing=None, orientation="RAS", oblique_deg=0.0, seed: int = 0, test_labels: bool = False,
                      prefix: str = "BRATS") -> list[Path]:
    """An MSD-style dataset in ``root``: ``imagesTr/CASE.nii.gz`` (one 4D (X, Y, Z, 4) int16 image per case),
    ``labelsTr/CASE.nii.gz`` (uint8), ``imagesTs/`` (and, with ``test_labels``, reference labels in
    ``labelsTs/``) and ``dataset.json``. Cases are ``{prefix}_001`` ...: the training cases first, then the
    test cases. ``shape``, ``spacing`` (mm along R, A, S; None = 192 mm field of view), ``orientation`` and
    ``oblique_deg`` are each one value for all cases or a sequence with one per case (training then test).
    Returns the paths written."""
    root, n = Path(root), num_training + num_test
    written: list[Path] = []
    training, test = [], []
    for i, case, image, label, store in _cases(n, shape, spacing, orientation, oblique_deg, seed, prefix):
        split = "Tr" if i < num_training else "Ts"
        _save(store(image), root / f"images{split}" / f"{case}.nii.gz", written)
        if split == "Tr" or test_labels:
            _save(label, root / f"labels{split}" / f"{case}.nii.gz", written)
        if split == "Tr":
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        else:
            test.append(f"./imagesTs/{case}.nii.gz")
    meta = {
        "name": "BraTS-like phantoms",
        "description": f"Synthetic BraTS-like MRI phantoms (medseg3d.data.synthetic, seed {seed})",
        "reference": "synthetic; generated by medseg3d",
        "licence": "CC0",
        "tensorImageSize": "4D",
        "modality": {str(c): name for c, name in enumerate(CHANNELS)},
        "channel_names": {str(c): name for c, name in enumerate(CHANNELS)},
        "labels": {str(v): k for k, v in LABELS.items()},
        "numTraining": num_training,
        "numTest": num_test,
        "training": training,
        "test": test,
    }
    _write_json(meta, root / "dataset.json", written)
    return written


def write_nnunet_dataset(root: str | Path, num_training: int = 4, num_test: int = 0, shape=(48, 48, 48),
                         spacing=None, orientation="RAS", oblique_deg=0.0, seed: int = 0,
                         prefix: str = "BRATS") -> list[Path]:
    """An nnU-Net v2 raw dataset in ``root``: ``imagesTr/CASE_0000.nii.gz`` ... ``_0003`` (one int16 file per
    channel), ``labelsTr/CASE.nii.gz``, ``imagesTs/`` for the test cases and ``dataset.json`` (channel_names,
    labels name -> value, numTraining, file_ending). Labels keep the BraTS values 0/1/2/4. Geometry arguments
    as in :func:`write_msd_dataset`. Returns the paths written."""
    root, n = Path(root), num_training + num_test
    written: list[Path] = []
    for i, case, image, label, store in _cases(n, shape, spacing, orientation, oblique_deg, seed, prefix):
        split = "Tr" if i < num_training else "Ts"
        for c in range(len(CHANNELS)):
            _save(store(image[c]), root / f"images{split}" / f"{case}_{c:04d}.nii.gz",
                  written)
        if split == "Tr":
            _save(label, root / "labelsTr" / f"{case}.nii.gz", written)
    meta = {
        "name": "BraTS-like phantoms",
        "description": f"Synthetic BraTS-like MRI phantoms (medseg3d.data.synthetic, seed {seed})",
        "channel_names": {str(c): name for c, name in enumerate(CHANNELS)},
        "labels": dict(LABELS),
        "numTraining": num_training,
        "file_ending": ".nii.gz",
    }
    _write_json(meta, root / "dataset.json", written)
    return written


def write_brats_folders(root: str | Path, num_cases: int = 4, shape=(48, 48, 48), spacing=None,
                        orientation="LPS", oblique_deg=0.0, seed: int = 0, prefix: str = "BraTS") -> list[Path]:
    """BraTS-style case folders in ``root``: ``CASE/CASE_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair`` (int16) and
    ``_seg`` (uint8), cases ``{prefix}_001`` .... Stored LPS by default, as the BraTS release is. Geometry
    arguments as in :func:`write_msd_dataset`. Returns the paths written."""
    root = Path(root)
    written: list[Path] = []
    for _, case, image, label, store in _cases(num_cases, shape, spacing, orientation, oblique_deg, seed, prefix):
        for c, suffix in enumerate(BRATS_SUFFIXES):
            _save(store(image[c]), root / case / f"{case}_{suffix}.nii.gz", written)
        _save(label, root / case / f"{case}_seg.nii.gz", written)
    return written
