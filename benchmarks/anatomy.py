"""A real-anatomy T1 MRI data set (gray / white matter labels) built from the MNI ICBM152 2009a template.

The template and its tissue probability maps ship inside the ``nilearn`` package (``nilearn/datasets/data/``:
``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` and the ``_gm_`` / ``_wm_`` maps, 1 mm, brain-extracted),
so nothing is downloaded. ``nilearn`` is a benchmark-only dependency (``pip install nilearn``).

Each case is the template seen through a different "subject" and "scanner":

- a random rigid transform (rotation up to ``max_rotation_deg`` about each axis, translation up to
  ``max_shift_mm``) and a smooth random elastic warp (a coarse displacement grid, cubic-interpolated), the same
  mapping for the image and the labels;
- its own voxel grid: an orientation (RAS, LPS, LAS, PSR, RSA, LPI, or oblique: the nearest code rotated by a
  few degrees) and a spacing (1.5-2.5 mm, some anisotropic), see ``GEOMETRIES``; every voxel is sampled from the
  template's world coordinates with ``scipy.ndimage.map_coordinates``, so each case's affine is exact;
- the template and probability maps blurred to the case's resolution first (a Gaussian of FWHM ≈ the voxel
  size), the image sampled linearly, the gray- and white-matter probabilities sampled linearly and the label the
  argmax of background / gray matter / white matter (background = 1 - GM - WM);
- a multiplicative smooth bias field (a random quadratic in world coordinates, about ±25 %), a random global
  intensity scale, Rician noise (2-4 % of the white-matter intensity), and zeros outside the brain mask (the
  template is brain-extracted, so are the cases), stored as int16.

Written as an nnU-Net v2 raw data set: ``imagesTr/ANAT_001_0000.nii.gz``, ``labelsTr/ANAT_001.nii.gz``,
``imagesTs`` / ``labelsTs`` for the held-out cases, ``dataset.json`` with ``channel_names {"0": "T1"}`` and
``labels {"background": 0, "gray_matter": 1, "white_matter": 2}``. Seeded: the same arguments give the same
files. The folder is built next to its destination and renamed into place when complete; a folder built with
the same arguments is reused.

    python benchmarks/anatomy.py [--out ~/.cache/medseg3d/bench/anatomy] [--cases 8] [--test 2] [--seed 0]
                                 [--scale 1.0] [--overwrite] [--preview anatomy.png]

``--scale`` multiplies every spacing (``--scale 3`` gives 4.5-7.5 mm voxels: tiny cases for tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from medseg3d.errors import MedsegError  # noqa: E402

DEFAULT_OUT = Path.home() / ".cache" / "medseg3d" / "bench" / "anatomy"
LABELS = {"background": 0, "gray_matter": 1, "white_matter": 2}
TEMPLATE_FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                  "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                  "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
BUILD_STAMP = ".anatomy_build.json"
BUILD_VERSION = 1


@dataclass(frozen=True)
class Geometry:
    """A case's voxel grid: the orientation code of its axes (``nibabel.aff2axcodes`` of the written affine),
    an extra rotation in degrees about the world x, y, z axes (oblique when nonzero) and the voxel size in mm."""

    code: str
    spacing: tuple[float, float, float]
    oblique_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)


# One per case, cycled when more cases are asked for. The last two are the held-out cases by default (8 cases).
GEOMETRIES = (
    Geometry("RAS", (2.0, 2.0, 2.0)),
    Geometry("LPS", (1.5, 1.5, 2.5)),                       # axial, thick slices
    Geometry("LAS", (2.2, 2.2, 2.2)),
    Geometry("PSR", (2.0, 2.0, 2.5)),                       # sagittal slices
    Geometry("RAS", (1.8, 1.8, 1.8), (12.0, 0.0, 8.0)),     # oblique
    Geometry("RSA", (1.75, 1.75, 2.5)),                     # coronal slices
    Geometry("LPI", (2.4, 2.4, 2.4)),
    Geometry("PSR", (2.0, 2.0, 2.3), (0.0, 10.0, -15.0)),   # oblique sagittal
)
_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def nilearn_data_dir() -> Path:
    """The folder of template files inside the installed nilearn package (found without importing nilearn)."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MedsegError("nilearn: not installed; the anatomy benchmark data is built from the MNI template it "
                          "ships, install it with `pip install nilearn`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    for name in TEMPLATE_FILES.values():
        if not (folder / name).is_file():
            raise MedsegError(f"{folder / name}: not found in the installed nilearn; install a nilearn version "
                              "that ships the MNI ICBM152 2009a template (0.10 or later)")
    return folder


def rotation(deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix about the world x, then y, then z axes (degrees)."""
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def direction_matrix(geom: Geometry) -> np.ndarray:
    """Unit vectors (RAS world) of the three voxel axes, as columns."""
    if sorted(_AXIS[c][0] for c in geom.code) != [0, 1, 2]:
        raise ValueError(f"orientation code {geom.code!r} must name each of R/L, A/P, S/I once")
    d = np.zeros((3, 3))
    for j, c in enumerate(geom.code):
        axis, sign = _AXIS[c]
        d[axis, j] = sign
    return rotation(geom.oblique_deg) @ d


class Template:
    """The MNI T1 template and its GM/WM probability maps (cropped to the brain), blurred per resolution."""

    def __init__(self, folder: Path):
        imgs = {k: nib.load(str(folder / f)) for k, f in TEMPLATE_FILES.items()}
        t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
        box = [(max(int(i.min()) - 8, 0), int(i.max()) + 9) for i in np.nonzero(t1 > 0)]
        sl = tuple(slice(a, b) for a, b in box)
        shift = np.eye(4)
        shift[:3, 3] = [a for a, _ in box]
        self.affine = imgs["t1"].affine @ shift  # voxel -> RAS mm of the cropped arrays
        self.inv_affine = np.linalg.inv(self.affine)
        self.arrays = {"t1": t1[sl], **{k: np.asarray(imgs[k].dataobj, dtype=np.float32)[sl] / 255.0
                                        for k in ("gm", "wm")}}
        self.wm_intensity = float(np.median(self.arrays["t1"][self.arrays["wm"] > 0.9]))
        inside = np.array(np.nonzero(self.arrays["t1"][::3, ::3, ::3] > 0), float) * 3  # brain voxels, subsampled
        self.brain_world = (self.affine[:3, :3] @ inside + self.affine[:3, 3:]).T  # (N, 3) RAS mm
        self.center = (self.brain_world.min(0) + self.brain_world.max(0)) / 2
        self._blurred: dict[float, dict[str, np.ndarray]] = {}

    def blurred(self, spacing_mm: float) -> dict[str, np.ndarray]:
        """The arrays smoothed to a voxel size of ``spacing_mm`` (Gaussian FWHM = the voxel size, less the
        template's own 1 mm)."""
        sigma = round(float(np.sqrt(max(spacing_mm ** 2 - 1.0, 0.0)) / 2.3548), 2)
        if sigma not in self._blurred:
            self._blurred[sigma] = {k: ndimage.gaussian_filter(a, sigma) if sigma > 0 else a
                                    for k, a in self.arrays.items()}
        return self._blurred[sigma]


def case_grid(template: Template, geom: Geometry, scale: float, rot: np.ndarray, shift: np.ndarray,
              margin_mm: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The case's affine (voxel -> RAS mm) and shape: a box along its own axes around the moved brain."""
    spacing = np.asarray(geom.spacing, float) * scale
    d = direction_matrix(geom)
    moved = (rot @ (template.brain_world - template.center).T).T + template.center + shift
    along = moved @ d  # coordinates along the voxel axes
    lo, hi = along.min(0) - margin_mm, along.max(0) + margin_mm
    shape = tuple(int(np.ceil((h - l_) / s)) + 1 for l_, h, s in zip(lo, hi, spacing))
    affine = np.eye(4)
    affine[:3, :3] = d * spacing[None, :]
    affine[:3, 3] = d @ lo
    return affine, shape


def smooth_warp(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, control_mm: float, sigma_mm: float):
    """A random smooth displacement field: normal displacements (sigma ``sigma_mm``) on a coarse world grid with
    ``control_mm`` spacing over the box ``lo..hi``, evaluated at world points by cubic interpolation."""
    n = np.maximum(np.ceil((hi - lo) / control_mm).astype(int) + 1, 4)
    grid = rng.normal(0.0, sigma_mm, size=(3, *n))
    grid = np.stack([ndimage.gaussian_filter(g, 0.7, mode="nearest") for g in grid])  # no single-node spikes
    step = (hi - lo) / (n - 1)

    def at(points: np.ndarray) -> np.ndarray:  # points (3, N) world mm -> displacement (3, N) mm
        idx = (points - lo[:, None]) / step[:, None]
        return np.stack([ndimage.map_coordinates(g, idx, order=3, mode="nearest") for g in grid])

    return at


def bias_field(rng: np.random.Generator, points: np.ndarray, center: np.ndarray, strength: float) -> np.ndarray:
    """A smooth multiplicative field: exp of a random quadratic in world coordinates (about 1 ± ``strength``
    over a head)."""
    u = (points - center[:, None]) / 80.0  # ~[-1, 1] over a brain
    terms = [u[0], u[1], u[2], u[0] * u[1], u[0] * u[2], u[1] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    coef = rng.uniform(-1.0, 1.0, size=len(terms))
    log_field = sum(c * t for c, t in zip(coef, terms))
    log_field = log_field - np.median(log_field)
    span = np.percentile(np.abs(log_field), 99) + 1e-6
    return np.exp(log_field * (np.log1p(strength) / span))


def make_case(template: Template, geom: Geometry, rng: np.random.Generator, scale: float = 1.0,
              max_rotation_deg: float = 10.0, max_shift_mm: float = 8.0, warp_mm: float = 2.5,
              bias_strength: float = 0.25, noise: tuple[float, float] = (0.02, 0.04)):
    """One case: (image int16, labels uint8, affine)."""
    rot = rotation(tuple(rng.uniform(-max_rotation_deg, max_rotation_deg, 3)))
    shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    margin = 3.0 * warp_mm + 4.0  # the warp moves the brain by a few mm at most
    affine, shape = case_grid(template, geom, scale, rot, shift, margin)
    vox = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ vox + affine[:3, 3:]
    lo, hi = world.min(1), world.max(1)
    warp = smooth_warp(rng, lo, hi, control_mm=25.0, sigma_mm=warp_mm)
    # case world -> template world: undo the subject's rigid motion, then the warp (defined on the case side)
    src = rot.T @ (world - template.center[:, None] - shift[:, None]) + template.center[:, None] + warp(world)
    idx = template.inv_affine[:3, :3] @ src + template.inv_affine[:3, 3:]
    arrays = template.blurred(float(np.prod(np.asarray(geom.spacing) * scale) ** (1 / 3)))
    sample = {k: ndimage.map_coordinates(a, idx, order=1, mode="constant", cval=0.0).reshape(shape)
              for k, a in arrays.items()}
    gm, wm = sample["gm"], sample["wm"]
    labels = np.argmax(np.stack([np.clip(1.0 - gm - wm, 0.0, 1.0), gm, wm]), axis=0).astype(np.uint8)

    brain = ndimage.binary_fill_holes(sample["t1"] > 0.02 * template.wm_intensity)
    img = sample["t1"] * bias_field(rng, world, template.center, bias_strength).reshape(shape)
    gain = rng.uniform(2.0, 6.0)  # scanner units differ between cases
    sigma = rng.uniform(*noise) * template.wm_intensity
    img = np.sqrt((img + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)  # Rician
    img = np.where(brain, img * gain, 0.0)
    return np.clip(np.rint(img), 0, 32767).astype(np.int16), labels, affine


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def build_anatomy_dataset(out: str | Path = DEFAULT_OUT, n_cases: int = 8, n_test: int = 2, seed: int = 0,
                          scale: float = 1.0, overwrite: bool = False) -> Path:
    """Build (or reuse) the data set in ``out``; returns the folder. Cases ``ANAT_001``..: the first
    ``n_cases - n_test`` are training cases (imagesTr/labelsTr), the rest held out (imagesTs/labelsTs); case i
    gets ``GEOMETRIES[i % len(GEOMETRIES)]``."""
    out = Path(out).expanduser().resolve()
    if n_cases < 2 or not 1 <= n_test < n_cases:
        raise MedsegError(f"{out}: need at least one training and one held-out case (cases={n_cases}, "
                          f"test={n_test})")
    if scale <= 0:
        raise MedsegError(f"{out}: the scale factor must be positive (got {scale})")
    params = {"version": BUILD_VERSION, "cases": n_cases, "test": n_test, "seed": seed, "scale": scale,
              "script": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}  # an edited script rebuilds
    stamp = out / BUILD_STAMP
    if out.exists():
        old = json.loads(stamp.read_text()) if stamp.is_file() else None
        if old == params:
            return out
        if old is None:
            raise MedsegError(f"{out}: exists and was not built by this script; give another output folder")
        if not overwrite:
            raise MedsegError(f"{out}: holds a data set built with other settings ({old}); pass --overwrite to "
                              "rebuild it or give another output folder")
    template = Template(nilearn_data_dir())
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        n_train = n_cases - n_test
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        geometry = {}
        for i in range(n_cases):
            case = f"ANAT_{i + 1:03d}"
            geom = GEOMETRIES[i % len(GEOMETRIES)]
            img, lab, affine = make_case(template, geom, np.random.default_rng(rng.integers(2 ** 63)), scale)
            split = "Tr" if i < n_train else "Ts"
            nib.save(_nifti(img, affine), str(tmp / f"images{split}" / f"{case}_0000.nii.gz"))
            nib.save(_nifti(lab, affine), str(tmp / f"labels{split}" / f"{case}.nii.gz"))
            geometry[case] = {"split": "training" if split == "Tr" else "test", "orientation": geom.code,
                              "oblique_deg": list(geom.oblique_deg),
                              "spacing_mm": [round(s * scale, 4) for s in geom.spacing], "shape": list(img.shape)}
        meta = {
            "name": "MNI anatomy",
            "description": "T1 cases made from the MNI ICBM152 2009a symmetric template (as shipped by nilearn) "
                           "by random rigid motion, elastic warps, bias fields, Rician noise and different voxel "
                           "grids; gray/white matter labels from the template's tissue probability maps",
            "reference": "Fonov et al., NeuroImage 2011 and 2009 (MNI ICBM152 nonlinear 2009a); built by "
                         "benchmarks/anatomy.py of medseg3d",
            "licence": "the ICBM 2009a template's copyright notice (McConnell Brain Imaging Centre) applies",
            "channel_names": {"0": "T1"},
            "labels": dict(LABELS),
            "numTraining": n_train,
            "numTest": n_test,
            "file_ending": ".nii.gz",
            "geometry": geometry,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / BUILD_STAMP).write_text(json.dumps(params) + "\n")
        if out.exists():  # a previous build of this script (checked above), replaced only now that the new one is whole
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def preview(dataset: str | Path, path: str | Path, cases: list[str] | None = None) -> Path:
    """A PNG of the middle axial, coronal and sagittal slices (closest-to-RAS view) of some cases with their
    gray (green) and white (red) matter label outlines; ``cases`` default to all."""
    from matplotlib.figure import Figure

    dataset = Path(dataset)
    files = sorted(dataset.glob("images*/*_0000.nii.gz"))
    if cases:
        files = [f for f in files if f.name[:-12] in cases]
    fig = Figure(figsize=(9, 3 * len(files)))
    for r, f in enumerate(files):
        case = f.name[:-12]
        lab_path = f.parent.parent / f.parent.name.replace("images", "labels") / f"{case}.nii.gz"
        img = nib.as_closest_canonical(nib.load(str(f)))
        lab = np.asarray(nib.as_closest_canonical(nib.load(str(lab_path))).dataobj)
        a = np.asarray(img.dataobj, dtype=np.float32)
        c = [s // 2 for s in a.shape]
        views = [(a[:, :, c[2]], lab[:, :, c[2]], "axial"), (a[:, c[1], :], lab[:, c[1], :], "coronal"),
                 (a[c[0], :, :], lab[c[0], :, :], "sagittal")]
        zooms = img.header.get_zooms()[:3]
        aspects = [zooms[1] / zooms[0], zooms[2] / zooms[0], zooms[2] / zooms[1]]
        for k, ((im, lb, name), asp) in enumerate(zip(views, aspects)):
            ax = fig.add_subplot(len(files), 3, 3 * r + k + 1)
            ax.imshow(im.T, origin="lower", cmap="gray", aspect=asp)
            ax.contour((lb == 1).T, levels=[0.5], colors="lime", linewidths=0.6)
            ax.contour((lb == 2).T, levels=[0.5], colors="red", linewidths=0.6)
            ax.set_title(f"{case} {''.join(nib.aff2axcodes(nib.load(str(f)).affine))} {name}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    ap.add_argument("--test", type=int, default=2, help="held-out cases among them (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every voxel spacing (default 1)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild a folder this script built with other settings")
    ap.add_argument("--preview", default=None, help="also write a PNG of the middle slices with label outlines")
    args = ap.parse_args(argv)
    try:
        out = build_anatomy_dataset(args.out, args.cases, args.test, args.seed, args.scale, args.overwrite)
    except MedsegError as e:
        sys.exit(f"error: {e}")
    meta = json.loads((out / "dataset.json").read_text())
    for case, g in meta["geometry"].items():
        print(f"{case} {g['split']:8s} {g['orientation']} oblique {g['oblique_deg']} spacing {g['spacing_mm']} "
              f"shape {g['shape']}")
    if args.preview:
        print(f"preview: {preview(out, args.preview)}")
    print(f"data set: {out}")


if __name__ == "__main__":
    main()
