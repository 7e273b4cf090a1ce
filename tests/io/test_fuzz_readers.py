"""Fuzzing the readers: random NIfTI / NRRD / MHA files (headers written byte by byte, so nothing the libraries'
writers would refuse is out of reach) with random shapes (1 to 4 dimensions, singleton axes, channels last),
dtypes (uint8, int16, float32, float64, NIfTI scl_slope/scl_inter), affines (axis-aligned, oblique, singular,
huge, NaN) and 4th axes (channels, vector intent, time series).

``read_scan`` either returns a Scan whose geometry is the file's own (the affine nibabel or SimpleITK reads,
the voxels they read) and a label map written back for it has the input's shape and affine, or it raises a
MedsegError; never another exception, never a wrong geometry. And what the generator knows to be a good
volume is read, so the checks cannot pass by refusing everything."""

import gzip
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg3d.errors import MedsegError
from medseg3d.io.readers import read_scan
from medseg3d.io.writers import image_writer

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
DTYPES = {"uint8": ("uchar", "MET_UCHAR"), "int16": ("short", "MET_SHORT"), "float32": ("float", "MET_FLOAT"),
          "float64": ("double", "MET_DOUBLE")}
FORMATS = ["nii.gz", "nii", "nrrd", "mha"]
GEOMETRIES = ["axes", "oblique", "oblique", "singular", "huge", "nan"]
BAD_GEOMETRY = {"singular", "huge", "nan"}
FOURTH = ["plain", "msd", "vector", "vector5d", "time", "time_ms"]  # how a 4D NIfTI labels its 4th axis
TIME = {"time", "time_ms"}


def rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@st.composite
def specs(draw):
    fmt = draw(st.sampled_from(FORMATS))
    ndim = draw(st.sampled_from([3, 4, 3, 4, 1, 2]))  # mostly volumes: the geometry checks need them
    size = st.sampled_from([2, 3, 5, 6, 1])
    shape = tuple(draw(size) for _ in range(min(ndim, 3)))
    channels = draw(st.sampled_from([1, 2, 3, 4])) if ndim == 4 else 1
    geometry = draw(st.sampled_from(GEOMETRIES))
    perm = draw(st.permutations([0, 1, 2]))
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    spacing = [draw(st.floats(0.1, 10.0)) for _ in range(3)]
    angles = [draw(st.floats(-np.pi, np.pi)) for _ in range(3)] if geometry == "oblique" else [0.0, 0.0, 0.0]
    origin = [draw(st.floats(-500.0, 500.0)) for _ in range(3)]
    return {
        "fmt": fmt, "shape": shape, "ndim": ndim, "channels": channels, "geometry": geometry, "perm": perm,
        "signs": signs, "spacing": spacing, "angles": angles, "origin": origin,
        "dtype": draw(st.sampled_from(list(DTYPES))),
        "scale": draw(st.sampled_from([None, (1.0, 0.0), (0.5, 0.0), (2.0, 10.0), (0.0, 0.0)])),
        "codes": (draw(st.sampled_from([0, 1, 2, 4])), draw(st.sampled_from([0, 1, 2]))),  # sform, qform
        "fourth": draw(st.sampled_from(FOURTH)),
        "nan_voxel": draw(st.booleans()) and draw(st.booleans()),  # a quarter of the float images
        "allow_2d": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def ras_affine(spec) -> np.ndarray:
    """The voxel -> RAS affine the spec asks for (bad on purpose for the bad geometries)."""
    m = np.zeros((3, 3))
    for col, row in enumerate(spec["perm"]):
        m[row, col] = spec["signs"][col] * spec["spacing"][col]
    m = rotation(spec["angles"]) @ m
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = m, spec["origin"]
    if spec["geometry"] == "singular":
        a[:3, 1] = a[:3, 0] * 2.0  # parallel axes (the first two: a 2D image has them too)
    elif spec["geometry"] == "huge":
        a[spec["perm"][0], 0] = 1e20
    elif spec["geometry"] == "nan":
        a[1, 3] = np.nan
    return a


def voxels(spec, shape) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"])
    dtype = np.dtype(spec["dtype"])
    if dtype.kind == "f":
        data = rng.normal(0, 100, shape).astype(dtype)
        if spec["nan_voxel"]:
            data.flat[rng.integers(data.size)] = np.nan
        return data
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def write_nifti(spec, path: Path) -> None:
    shape = spec["shape"] + ((spec["channels"],) if spec["ndim"] == 4 else ())
    if spec["ndim"] == 4 and spec["fourth"] == "vector5d":
        shape = spec["shape"] + (1, spec["channels"])
    data = voxels(spec, shape)
    affine = ras_affine(spec)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(data.dtype)
    hdr.set_data_shape(shape)
    scode, qcode = spec["codes"]
    if spec["geometry"] in BAD_GEOMETRY:
        scode, qcode = max(scode, 1), 0  # the bad matrix is the one nibabel reads
        hdr.set_sform(affine, scode)
    else:
        hdr.set_qform(affine, qcode)  # also fills pixdim (the affine when both codes are 0)
        hdr.set_sform(affine, scode)
    if len(shape) >= 4:
        zooms = {"plain": 1.0, "msd": 1.0, "vector": 2.0, "vector5d": 1.0, "time": 2.5, "time_ms": 1.0}
        pixdim = hdr["pixdim"]
        pixdim[4] = zooms[spec["fourth"]]
        hdr["pixdim"] = pixdim
        t_unit = {"plain": "unknown", "time_ms": "msec"}.get(spec["fourth"], "sec")
        hdr.set_xyzt_units("mm", t_unit)
        if spec["fourth"] in ("vector", "vector5d"):
            hdr.set_intent("vector")
    if spec["scale"] is None:
        hdr["scl_slope"], hdr["scl_inter"] = np.nan, np.nan
    else:
        hdr["scl_slope"], hdr["scl_inter"] = spec["scale"]
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F")
    path.write_bytes(gzip.compress(raw, 1) if path.name.endswith(".gz") else raw)


def lps_geometry(spec):
    """(spacing, origin, direction) of the spec's affine in ITK's LPS terms (bad values written as they are)."""
    a = ras_affine(spec)
    a[:2] *= -1  # RAS -> LPS, element by element (a product would spread one NaN over the column)
    with np.errstate(all="ignore"):
        spacing = np.linalg.norm(a[:3, :3], axis=0)
        direction = a[:3, :3] / np.where(spacing > 0, spacing, 1)
    return spacing, a[:3, 3], direction


def fmt_floats(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def write_sitk(spec, path: Path) -> None:
    n = min(spec["ndim"], 3)
    shape = spec["shape"]
    vector = spec["ndim"] == 4 and spec["fourth"] != "time"  # 'time': a 4D image of scalars
    comps = spec["channels"] if vector else 1
    dims = list(shape) + ([spec["channels"]] if spec["ndim"] == 4 and not vector else [])
    data = voxels(spec, tuple(reversed(dims)) + ((comps,) if comps > 1 else ()))  # ITK order: x fastest
    spacing, origin, direction = lps_geometry(spec)
    d = len(dims)
    sp = list(spacing[:n]) + [1.0] * (d - n)
    org = list(origin[:n]) + [0.0] * (d - n)
    dirm = np.eye(d)
    dirm[:n, :n] = direction[:n, :n]
    if path.suffix == ".mha":
        lines = ["ObjectType = Image", f"NDims = {d}", "BinaryData = True", "BinaryDataByteOrderMSB = False",
                 f"TransformMatrix = {fmt_floats(dirm.T.ravel())}", f"Offset = {fmt_floats(org)}",
                 f"ElementSpacing = {fmt_floats(sp)}", f"DimSize = {' '.join(map(str, dims))}"]
        if comps > 1:
            lines.append(f"ElementNumberOfChannels = {comps}")
        lines += [f"ElementType = {DTYPES[spec['dtype']][1]}", "ElementDataFile = LOCAL"]
    else:
        vecs = " ".join("(" + ",".join(repr(float(x)) for x in dirm[:, i] * sp[i]) + ")" for i in range(d))
        lines = ["NRRD0004", f"type: {DTYPES[spec['dtype']][0]}", f"dimension: {d + (comps > 1)}",
                 "space: left-posterior-superior" if d == 3 else f"space dimension: {d}",
                 f"sizes: {' '.join(map(str, ([comps] if comps > 1 else []) + dims))}",
                 f"space directions: {'none ' if comps > 1 else ''}{vecs}",
                 f"kinds: {'vector ' if comps > 1 else ''}{' '.join(['domain'] * d)}",
                 "endian: little", "encoding: raw", f"space origin: ({','.join(repr(float(x)) for x in org)})"]
    path.write_bytes(("\n".join(lines) + "\n" + ("\n" if path.suffix == ".nrrd" else "")).encode()
                     + data.astype(data.dtype.newbyteorder("<")).tobytes())


def expected_nibabel(path: Path):
    img = nib.load(str(path))
    data = img.get_fdata(dtype=np.float32)
    return img, data


def must_read(spec) -> bool:
    """What the generator knows to be a good volume: it must be read."""
    shape = spec["shape"]
    flat = sum(s == 1 for s in shape)
    is_volume = spec["ndim"] >= 3 and (flat == 0 or (flat == 1 and spec["allow_2d"]))
    fourth_ok = spec["ndim"] < 4 or spec["fourth"] not in TIME
    finite = not (spec["nan_voxel"] and spec["dtype"].startswith("float"))
    return spec["geometry"] not in BAD_GEOMETRY and is_volume and fourth_ok and finite


def close_affine(a, b) -> bool:
    return np.allclose(a, b, rtol=1e-5, atol=1e-4)


def check(spec) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"image.{spec['fmt']}"
        (write_nifti if spec["fmt"].startswith("nii") else write_sitk)(spec, path)
        try:
            scan = read_scan(path, allow_2d=spec["allow_2d"])
        except MedsegError as e:
            msg = str(e)
            assert "\n" not in msg and str(path) in msg, msg
            assert not must_read(spec), f"a good volume was refused: {msg}"
            return
        assert spec["geometry"] not in BAD_GEOMETRY, "a bad geometry was accepted"
        assert np.isfinite(scan.data).all() and scan.data.dtype == np.float32
        assert scan.data.ndim == 4 and sum(s == 1 for s in scan.shape) <= (1 if spec["allow_2d"] else 0)
        if spec["fmt"].startswith("nii"):
            img, data = expected_nibabel(path)
            assert close_affine(scan.affine, img.affine)
            spatial = tuple(img.shape[:3]) if len(img.shape) >= 3 else tuple(img.shape) + (1,)
            assert scan.shape == spatial
            np.testing.assert_array_equal(scan.data, np.moveaxis(data.reshape(spatial + (-1,)), -1, 0))
            out_fmt, _ = "nifti", None
        else:
            img = sitk.ReadImage(str(path))
            n = img.GetDimension()
            d = np.eye(3)
            d[:n, :n] = np.reshape(img.GetDirection(), (n, n))
            sp = np.ones(3)
            sp[:n] = img.GetSpacing()
            org = np.zeros(3)
            org[:n] = img.GetOrigin()
            affine = np.eye(4)
            affine[:3, :3], affine[:3, 3] = d @ np.diag(sp), org
            assert close_affine(scan.affine, LPS @ affine)
            arr = sitk.GetArrayFromImage(img)
            arr = arr[..., None] if img.GetNumberOfComponentsPerPixel() == 1 else arr
            arr = arr[None] if n == 2 else arr  # (1, Y, X, C) for a 2D image: one slice
            assert scan.shape == tuple(img.GetSize()) + (1,) * (3 - n)
            np.testing.assert_array_equal(scan.data, np.transpose(arr, (3, 2, 1, 0)).astype(np.float32))
            out_fmt = spec["fmt"]
        # a label map written for the scan has the input's grid
        labels = (np.arange(np.prod(scan.shape)) % 3).reshape(scan.shape).astype(np.uint8)
        out = Path(tmp) / f"labels.{'nii.gz' if out_fmt == 'nifti' else out_fmt}"
        image_writer(labels, scan, out_fmt)(str(out))
        if out_fmt == "nifti":
            back = nib.load(str(out))
            assert back.shape == scan.shape
            assert close_affine(back.affine, img.affine)
            assert int(back.header["intent_code"]) == 1002
            np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
        else:
            back = sitk.ReadImage(str(out))
            assert back.GetSize()[:n] == img.GetSize() and back.GetSize() == scan.shape
            np.testing.assert_allclose(back.GetSpacing()[:n], img.GetSpacing(), rtol=1e-6)
            np.testing.assert_allclose(back.GetOrigin()[:n], img.GetOrigin(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(np.reshape(back.GetDirection(), (3, 3))[:n, :n],
                                       np.reshape(img.GetDirection(), (n, n)), atol=1e-6)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels.transpose(2, 1, 0))
        # and for a SimpleITK input a NIfTI label map carries its affine too
        if out_fmt != "nifti":
            nii = Path(tmp) / "labels.nii.gz"
            image_writer(labels, scan, "nifti")(str(nii))
            assert close_affine(nib.load(str(nii)).affine, scan.affine)


COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=60, **COMMON)
@given(specs())
def test_readers_return_the_files_geometry_or_one_medseg_error(spec):
    check(spec)


@pytest.mark.slow
@settings(max_examples=2000, **COMMON)
@given(specs())
def test_readers_fuzz_long(spec):
    check(spec)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("geometry", ["axes", "oblique"])
def test_the_generator_writes_good_volumes_that_are_read(fmt, geometry):
    """The oracle's 'must read' side is exercised on every format, whatever hypothesis draws."""
    spec = {"fmt": fmt, "shape": (5, 6, 3), "ndim": 4, "channels": 2, "geometry": geometry, "perm": [2, 0, 1],
            "signs": [-1.0, 1.0, -1.0], "spacing": [0.7, 1.3, 4.0], "angles": [0.3, -0.2, 1.1], "origin": [10, -20, 5],
            "dtype": "int16", "scale": (2.0, 10.0), "codes": (2, 1), "fourth": "msd", "nan_voxel": False,
            "allow_2d": False, "seed": 3}
    assert must_read(spec)
    check(spec)
    for bad in BAD_GEOMETRY:
        check({**spec, "geometry": bad})  # refused (check asserts a bad geometry is never accepted)
