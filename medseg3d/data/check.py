"""Dataset integrity check (``medseg3d check``), cheap enough to run before every training.

What is checked, per case: every listed file exists and lies inside the dataset folder; the image has the
expected number of channels; per-channel files share one grid; each label is a 3D integer map on its image's
grid (same shape; affine equal within :data:`AFFINE_ATOL`, the difference said in mm); label values are among
the labels; images hold no NaN or infinite voxels. Across the dataset: case ids are unique; regions use known
label values; cases whose spacing or orientation stands out from the others, empty labels, NIfTI files whose
qform and sform disagree and stray files in an nnU-Net folder are reported as warnings.

Geometry comes from the headers only (nibabel loads lazily; SimpleITK's ``ReadImageInformation``). Voxels
are read only where needed: every label (its values), and images stored as floating point (integer voxels
cannot be NaN); with a cache folder, what they showed is remembered while the file is unchanged.

The sentences are shared with :class:`medseg3d.data.transforms.LoadCased`, so a problem found here and the
same problem met while loading a case read alike.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import MedsegError
from ..io.nifti import NIFTI_SUFFIXES
from ..io.scan import first_line, image_suffix
from .datasets import DatasetInfo, inside_root, load_dataset, load_source, nnunet_file_ending
from .digest import FileMemo

AFFINE_ATOL = 1e-3  # mm (translation) and mm per voxel (the 3x3 part): the tolerance LoadCased applies
SPACING_OUTLIER = 3.0  # a case's spacing along an axis this many times finer or coarser than the median
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
FACTS_MEMO = "check_facts.json"
_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` 'error' (training would be wrong or fail) or 'warning'; the ``case`` id ('' for
    the dataset as a whole); the ``file`` it is in; ``message``: what is wrong and what to do."""

    severity: str
    case: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


# ------------------------------------------------------------------------------------------ shared sentences
def _fmt(values: Iterable[float]) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def geometry_difference(affine: np.ndarray, ref_affine: np.ndarray) -> str:
    """How two voxel -> RAS affines differ, in words: origin distance (mm), spacing, axis directions."""
    a, b = np.asarray(affine, dtype=float), np.asarray(ref_affine, dtype=float)
    parts = []
    dist = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    if dist > AFFINE_ATOL:
        parts.append(f"the origin is {dist:.3g} mm away")
    sa, sb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(sa, sb, atol=AFFINE_ATOL):
        parts.append(f"the spacing is {_fmt(sa)} mm against {_fmt(sb)} mm")
    cos = np.clip(np.sum(a[:3, :3] / np.maximum(sa, 1e-12) * (b[:3, :3] / np.maximum(sb, 1e-12)), axis=0), -1, 1)
    angle = float(np.degrees(np.arccos(cos)).max())
    if angle > 0.01:
        parts.append(f"the voxel axes differ by up to {angle:.3g} degrees")
    return ", ".join(parts) or "the affines differ by less than a micrometre per voxel"


def label_geometry_message(shape: Sequence[int], affine: np.ndarray, image_shape: Sequence[int],
                           image_affine: np.ndarray, image_file: str) -> str | None:
    """The sentence (without the label's file name) for a label not on its image's grid, or None."""
    if tuple(shape) != tuple(image_shape):
        return (f"label shape {tuple(shape)} differs from its image's {tuple(image_shape)} ({image_file}); "
                f"a label must be on its image's voxel grid, so resample it onto the image or fix the file")
    if not np.allclose(affine, image_affine, atol=AFFINE_ATOL):
        return (f"label geometry (affine) differs from its image's ({image_file}): "
                f"{geometry_difference(affine, image_affine)}; fix the label's header or resample it onto the "
                f"image's grid")
    return None


def channel_geometry_message(shape: Sequence[int], affine: np.ndarray, first_shape: Sequence[int],
                             first_affine: np.ndarray, first_file: str) -> str | None:
    """The sentence (without the channel's file name) for a channel file not on the first channel's grid."""
    if tuple(shape) != tuple(first_shape):
        return (f"shape {tuple(shape)} differs from the first channel's {tuple(first_shape)} ({first_file}); "
                f"channels must share one grid, so resample them onto one")
    if not np.allclose(affine, first_affine, atol=AFFINE_ATOL):
        return (f"geometry (affine) differs from the first channel's ({first_file}): "
                f"{geometry_difference(affine, first_affine)}; channels must share one grid, so resample them "
                f"onto one")
    return None


def label_values_message(extra: Sequence[int], allowed: Sequence[int]) -> str:
    """The sentence for label values that are not among the labels."""
    return (f"label value(s) {sorted(int(v) for v in extra)} are not among the config's labels "
            f"{sorted(int(v) for v in allowed)} (set data.labels, or data.brats_labels for BraTS: 2018 is 1/2/4, "
            f"2023 is 1/2/3)")


def label_channels_message(channels: int, shape: Sequence[int]) -> str:
    return f"a label map must be 3D with one value per voxel, got {channels} channels of shape {tuple(shape)}"


LABEL_NOT_INTEGER = ("a label map must hold integers, and this one holds fractional or NaN values; save it with "
                     "an integer data type")
NOT_FINITE = "image contains NaN or infinite values"


# ----------------------------------------------------------------------------------------------- headers
@dataclass
class Header:
    """What the check needs from an image file's header: grid shape (X, Y, Z), channel count, voxel -> RAS
    affine, whether voxels are stored as floating point, and (NIfTI) the qform if it disagrees with the
    affine used."""

    shape: tuple[int, int, int]
    channels: int
    affine: np.ndarray
    floating: bool
    qform_differs: str | None = None


def read_header(path: str | Path) -> Header:
    """The header of a NIfTI, NRRD or MHA file, without reading its voxels."""
    p = Path(path)
    suffix = image_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        try:
            img = nib.load(str(p))
        except Exception as e:  # nibabel raises several types for unreadable files
            raise MedsegError(f"{p}: not a readable NIfTI image ({first_line(e)})") from None
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise MedsegError(f"{p}: not a NIfTI image (nibabel read it as {type(img).__name__})")
        shape = img.shape
        extra = [s for s in shape[3:] if s != 1]
        if len(shape) < 3 or len(extra) > 1:
            raise MedsegError(f"{p}: image has shape {shape}; expected 3D or 4D (channels last)")
        hdr = img.header
        floating = np.issubdtype(hdr.get_data_dtype(), np.floating)  # (scaled integers stay finite)
        differs = None
        qform, qcode = hdr.get_qform(coded=True)
        _, scode = hdr.get_sform(coded=True)
        if qcode and scode and not np.allclose(qform, img.affine, atol=AFFINE_ATOL):
            differs = geometry_difference(qform, img.affine)
        return Header(tuple(int(s) for s in shape[:3]), int(np.prod(extra)) if extra else 1,
                      np.asarray(img.affine, dtype=float), bool(floating), differs)
    if suffix in SITK_SUFFIXES:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise MedsegError(f"{p}: not a readable {suffix[1:].upper()} image ({first_line(e)})") from None
        if reader.GetDimension() != 3:
            raise MedsegError(f"{p}: image has {reader.GetDimension()} dimensions; expected a 3D image")
        direction = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = _LPS @ direction @ np.diag(reader.GetSpacing())
        affine[:3, 3] = _LPS @ np.asarray(reader.GetOrigin(), dtype=float)
        floating = "float" in sitk.GetPixelIDValueAsString(reader.GetPixelID()).lower()
        return Header(tuple(int(s) for s in reader.GetSize()), int(reader.GetNumberOfComponents()), affine,
                      floating)
    raise MedsegError(f"{p}: unknown image format '{suffix}'; expected {', '.join(NIFTI_SUFFIXES + SITK_SUFFIXES)}")


def read_voxels(path: str | Path) -> np.ndarray:
    """The stored voxels of an image file, in the file's own type (no conversion to float for integer data)."""
    p = Path(path)
    if image_suffix(p) in NIFTI_SUFFIXES:
        return np.asanyarray(nib.load(str(p)).dataobj)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(p)))


# ------------------------------------------------------------------------------------------------- check
def _spacing_ras(affine: np.ndarray) -> np.ndarray:
    """Voxel size along the world R, A, S axes (each voxel axis assigned to the world axis it runs closest to)."""
    m = affine[:3, :3]
    sizes = np.linalg.norm(m, axis=0)
    out = np.zeros(3)
    for col in range(3):
        out[int(np.argmax(np.abs(m[:, col])))] = sizes[col]
    return np.where(out > 0, out, sizes)


def check_dataset(info: DatasetInfo, labels: Mapping[str, int] | None = None,
                  regions: Mapping[str, Sequence[int]] | None = None,
                  channels_expected: int | None = None, test_cases: bool = True,
                  cache_dir: str | Path | None = None) -> list[Problem]:
    """Every problem of a dataset's cases (training, and with ``test_cases`` the test images), errors first.

    ``labels`` (name -> value) defaults to the dataset's; ``channels_expected`` to its number of channel
    names. Read the dataset with ``load_dataset(..., strict=False)`` to have missing files, duplicate ids and
    files outside the folder reported here rather than raised on the first one. With ``cache_dir``, what was
    learnt from voxels (a label's values, an image's count of NaN) is remembered in
    ``cache_dir/check_facts.json`` while the file is unchanged (:class:`medseg3d.data.digest.FileMemo`), so a
    check before every training reads headers only."""
    labels = dict(info.labels if labels is None else labels)
    allowed = set(int(v) for v in labels.values())
    n_channels = len(info.channels) if channels_expected is None else int(channels_expected)
    root = Path(info.root)
    problems: list[Problem] = []

    def add(severity: str, case: str, file, message: str) -> None:
        problems.append(Problem(severity, case, str(file) if file else "", message))

    for name, vals in (regions or {}).items():
        unknown = sorted(set(int(v) for v in vals) - allowed)
        if unknown:
            add("error", "", root, f"region '{name}' uses label value(s) {unknown} that the labels "
                                    f"{sorted(allowed)} do not have; fix data.regions or data.labels")

    geometry: dict[str, Header] = {}  # case id -> first image's header (for the outlier warnings)
    with FileMemo(cache_dir, FACTS_MEMO) if cache_dir is not None else _NoMemo() as memo:
        for section, cases in (("training", info.training), ("test", info.test if test_cases else [])):
            counts = Counter(c["id"] for c in cases)
            for cid, n in counts.items():
                if n > 1:
                    files = ", ".join(_rel(c["image"][0], root) for c in cases if c["id"] == cid)
                    add("error", cid, root, f"case id '{cid}' is used by {n} {section} cases ({files}); case ids "
                                            f"come from the file names and must be unique, so rename or remove one")
            for case in cases:
                header = _check_case(case, n_channels, allowed, root, add, section, memo)
                if header is not None and section == "training":
                    geometry.setdefault(case["id"], header)

    _outliers(geometry, {c["id"]: c["image"][0] for c in info.training}, add)
    if info.layout == "nnunet":
        _nnunet_strays(info, n_channels, add)
    order = {"error": 0, "warning": 1}
    return sorted(problems, key=lambda p: order.get(p.severity, 2))  # stable: case order kept within each


class _NoMemo:
    def get(self, path, compute, tag=""):
        return compute(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _rel(f: str, root: str | Path) -> str:
    return os.path.relpath(f, root) if inside_root(root, f) else str(f)


def _nonfinite(path: str) -> int:
    return int(np.count_nonzero(~np.isfinite(np.asarray(read_voxels(path), dtype=np.float64))))


def _label_values(path: str) -> list[int] | None:
    """The sorted values of a label map, or None when it holds fractional (or NaN) values."""
    data = read_voxels(path)
    if np.issubdtype(data.dtype, np.floating):
        data = np.asarray(data, dtype=np.float64)
        if not np.array_equal(data, np.round(data)):  # also catches NaN
            return None
    return [int(v) for v in np.unique(data)]


def _check_case(case: dict, n_channels: int, allowed: set[int], root: Path, add, section: str,
                memo) -> Header | None:
    cid = case["id"]
    files = list(case["image"]) + ([case["label"]] if case.get("label") else [])
    ok = True
    for f in files:
        if not inside_root(root, f):
            add("error", cid, f, f"lies outside the dataset folder {root}; list files inside it "
                                 f"(e.g. ./imagesTr/CASE.nii.gz)")
            ok = False
        elif not Path(f).exists():
            what = "label" if f == case.get("label") else "image"
            add("error", cid, f, f"{what} file not found (listed for {section} case '{cid}')")
            ok = False
        elif Path(f).is_dir():
            add("error", cid, f, "is a folder; expected an image file")
            ok = False
    if not ok:
        return None

    headers: list[Header] = []
    for f in files:
        try:
            headers.append(read_header(f))
        except MedsegError as e:
            add("error", cid, f, str(e).split(": ", 1)[-1])
            return None
        if headers[-1].qform_differs:
            add("warning", cid, f, f"its qform and sform disagree ({headers[-1].qform_differs}); medseg3d uses "
                                   f"the sform, as nibabel does, but other tools may use the qform, so make "
                                   f"them agree")
    image_headers = headers[: len(case["image"])]
    first = image_headers[0]
    total = sum(h.channels for h in image_headers)
    if total != n_channels:
        add("error", cid, case["image"][0], f"case '{cid}' has {total} channel(s) but {n_channels} are expected "
                                            f"(one per channel name); add or remove channel files, or set "
                                            f"data.channels")
    for f, h in zip(case["image"][1:], image_headers[1:]):
        msg = channel_geometry_message(h.shape, h.affine, first.shape, first.affine, case["image"][0])
        if msg:
            add("error", cid, f, msg)

    def voxel_fact(f: str, compute, tag: str):
        try:
            return memo.get(f, compute, tag)
        except Exception as e:  # a truncated or corrupt file whose header reads fine
            add("error", cid, f, f"cannot read the voxel data ({first_line(e)}); the file is damaged, so write "
                                 f"it again")
            raise _Unreadable from None

    try:
        for f, h in zip(case["image"], image_headers):
            bad = voxel_fact(f, _nonfinite, "nonfinite") if h.floating else 0
            if bad:
                add("error", cid, f, f"{NOT_FINITE} ({bad} voxel(s)); replace them (e.g. by 0) before training")
        if case.get("label"):
            _check_label(case, headers[-1], first, allowed, add, voxel_fact)
    except _Unreadable:
        pass
    return first


class _Unreadable(Exception):
    pass


def _check_label(case: dict, h: Header, first: Header, allowed: set[int], add, voxel_fact) -> None:
    cid, f = case["id"], case["label"]
    if h.channels != 1:
        add("error", cid, f, label_channels_message(h.channels, h.shape))
        return
    msg = label_geometry_message(h.shape, h.affine, first.shape, first.affine, case["image"][0])
    if msg:
        add("error", cid, f, msg)
    found = voxel_fact(f, _label_values, "label_values")
    if found is None:
        add("error", cid, f, LABEL_NOT_INTEGER)
        return
    values = set(found)
    extra = values - allowed
    if extra:
        add("error", cid, f, label_values_message(sorted(extra), sorted(allowed)))
    if values <= {0}:
        add("warning", cid, f, "label is empty (background only); the case teaches only background, so check "
                               "that this is the right file")


def _outliers(headers: dict[str, Header], files: dict[str, str], add) -> None:
    """Warnings for cases whose orientation differs from a clear majority, or whose spacing along an axis is
    more than SPACING_OUTLIER times finer or coarser than the dataset's median."""
    if len(headers) < 3:
        return
    codes = {cid: "".join(nib.aff2axcodes(h.affine)) for cid, h in headers.items()}
    common, n = Counter(codes.values()).most_common(1)[0]
    if n > len(codes) / 2:
        for cid, code in codes.items():
            if code != common:
                add("warning", cid, files[cid], f"orientation {code} differs from the {common} of {n} of the "
                                                f"{len(codes)} cases; preprocessing reorients every case, but "
                                                f"check the header if this is unexpected (a flipped axis puts "
                                                f"the anatomy on the wrong side)")
    spacings = {cid: _spacing_ras(h.affine) for cid, h in headers.items()}
    median = np.median(np.stack(list(spacings.values())), axis=0)
    for cid, sp in spacings.items():
        ratio = np.maximum(sp / median, median / sp)
        if (ratio > SPACING_OUTLIER).any():
            axes = "".join(a for a, r in zip("RAS", ratio) if r > SPACING_OUTLIER)
            add("warning", cid, files[cid], f"spacing {_fmt(sp)} mm (R x A x S) is more than {SPACING_OUTLIER:g} "
                                            f"times off the dataset's median {_fmt(median)} mm along {axes}; "
                                            f"check the header's voxel size")


def _nnunet_strays(info: DatasetInfo, n_channels: int, add) -> None:
    """Warnings for files in an nnU-Net folder that belong to no case (they are ignored)."""
    import json

    root = Path(info.root)
    try:
        ending = nnunet_file_ending(json.loads((root / "dataset.json").read_text()), root / "dataset.json")
    except (OSError, ValueError):
        return
    for folder, cases, per_channel in (("imagesTr", info.training, True), ("imagesTs", info.test, True),
                                       ("labelsTr", info.training, False)):
        d = root / folder
        if not d.is_dir():
            continue
        listed = {os.path.normpath(f) for c in cases for f in (c["image"] if per_channel else [c["label"] or ""])}
        for f in sorted(d.iterdir()):
            if f.name.startswith(".") or not f.name.endswith(ending) or os.path.normpath(f) in listed:
                continue
            what = (f"not a channel file of any case (cases are CASE_0000{ending} ... CASE_{n_channels - 1:04d}"
                    f"{ending})" if per_channel else f"a label without images (no {f.name[:-len(ending)]}_0000"
                    f"{ending} in imagesTr)")
            add("warning", "", f, f"{what}; it is ignored")


# ------------------------------------------------------------------------------------------------ entry points
def check_folder(root: str | Path, layout: str = "auto", dataset_json: str = "dataset.json",
                 cache_dir: str | Path | None = None) -> tuple[list[Problem], int]:
    """Check a dataset folder with its own channel and label names: (problems, number of cases checked)."""
    info = load_dataset(root, layout, dataset_json, strict=False)
    return check_dataset(info, cache_dir=cache_dir), len(info.training) + len(info.test)


def check_config(cfg, test_cases: bool = True, cache_dir: str | Path | None = None) -> tuple[list[Problem], int]:
    """Check every data source of a config (:class:`medseg3d.config.Config`) with the config's labels,
    regions and channels: (problems, number of cases checked). Case ids of a multi-domain config are
    prefixed with the domain's name."""
    problems: list[Problem] = []
    n = 0
    for name, src in cfg.data.sources().items():
        info = load_source(src, strict=False)
        found = check_dataset(info, src.labels, src.regions, len(info.channels), test_cases, cache_dir)
        problems += [Problem(p.severity, f"{name}/{p.case}" if name and p.case else p.case or name, p.file,
                             p.message) for p in found]
        n += len(info.training) + (len(info.test) if test_cases else 0)
    order = {"error": 0, "warning": 1}
    return sorted(problems, key=lambda p: order.get(p.severity, 2)), n


def format_problems(problems: Sequence[Problem], n_cases: int | None = None, root: str | Path | None = None) -> str:
    """A table, one line per problem (severity, case, file relative to ``root``, message), and a summary line."""
    def rel(f: str) -> str:
        return _rel(f, root) if root and f else f

    rows = [(p.severity, p.case or "-", rel(p.file) or "-", p.message) for p in problems]
    lines = []
    if rows:
        w = [max(len(r[i]) for r in rows + [("severity", "case", "file", "")]) for i in range(3)]
        lines.append(f"{'severity':<{w[0]}}  {'case':<{w[1]}}  {'file':<{w[2]}}  problem")
        lines += [f"{s:<{w[0]}}  {c:<{w[1]}}  {f:<{w[2]}}  {m}" for s, c, f, m in rows]
    errors = sum(p.severity == "error" for p in problems)
    warnings = sum(p.severity == "warning" for p in problems)
    cases = f" in {n_cases} case(s)" if n_cases is not None else ""
    lines.append(f"{errors} error(s), {warnings} warning(s){cases}" if problems else f"no problems found{cases}")
    return "\n".join(lines)


def raise_for_errors(problems: Sequence[Problem]) -> None:
    """Raise one MedsegError naming the first error (and how many more there are); warnings pass."""
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        more = (f" ({len(errors) - 1} more dataset error(s); `medseg3d check` lists them all)"
                if len(errors) > 1 else "")
        raise MedsegError(f"{errors[0]}{more}")
