"""Every bad input is one MedsegError sentence naming the file (the table below is the README's); good inputs
of every layout are read with the file's own geometry; headers are checked before any voxel is read."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import make_affine, phantom, segmenter

from medseg3d.errors import MedsegError
from medseg3d.io.memory import available_memory, check_memory, estimate_bytes, format_bytes
from medseg3d.io.readers import read_label, read_scan, scan_from_image
from medseg3d.io.writers import image_writer

AFF = make_affine("LPS", (1.0, 1.2, 2.5))


def save_nifti(path, data, affine=AFF, **header):
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def raw_nifti(path, shape, dtype=np.int16, sform=None, data=b"", scl=None):
    """A NIfTI written byte by byte: any header, any (possibly missing) voxel data."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    if sform is not None:
        hdr.set_sform(sform, 1)
    if scl is not None:
        hdr["scl_slope"], hdr["scl_inter"] = scl
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def mha_header(path, dims, extra=(), etype="MET_SHORT", data=b""):
    lines = ["ObjectType = Image", f"NDims = {len(dims)}", f"DimSize = {' '.join(map(str, dims))}", *extra,
             f"ElementType = {etype}", "ElementDataFile = LOCAL"]
    path.write_bytes(("\n".join(lines) + "\n").encode() + data)
    return path


def touch(path, content=""):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def folder(path, *files):
    path.mkdir()
    for name in files:
        touch(path / name, "x")
    return path


def truncated(path, keep=0.5):
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)])
    return path


def sitk_file(path, array_zyx, spacing=(1.0, 1.2, 2.5), vector=False):
    img = sitk.GetImageFromArray(array_zyx, isVector=vector)
    img.SetSpacing(spacing[: img.GetDimension()])
    sitk.WriteImage(img, str(path), useCompression=path.suffix == ".nrrd")
    return path


def time_series(path, unit="sec", step=2.0, intent=None):
    img = nib.Nifti1Image(np.ones((6, 6, 6, 5), np.float32), AFF)
    img.header.set_xyzt_units("mm", unit)
    img.header.set_zooms((1.0, 1.2, 2.5, step))
    if intent:
        img.header.set_intent(intent)
    nib.save(img, path)
    return path


def sing(a=AFF):
    a = a.copy()
    a[:3, 2] = 0
    return a


def bad_voxels():
    x = phantom((6, 6, 6))
    x[0, 0, :3] = np.nan
    x[1, 1, 1] = np.inf
    return x


BIG = (30000, 30000, 30000)  # 108 TB as float32: beyond any machine
BAD_FILES = [  # (name, make(tmp_path) -> path, the message after "<path>: ")
    ("missing file", lambda d: d / "missing.nii.gz", "file not found"),
    ("empty folder", lambda d: folder(d / "empty"),
     "is an empty folder; expected an image file or a DICOM series folder"),
    ("folder without images", lambda d: folder(d / "junk", "a.txt"),
     "is a folder without DICOM files; expected an image file or a DICOM series"),
    ("unknown suffix", lambda d: touch(d / "scan.png", b"\x89PNG"),
     "unknown image format '.png'; expected .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd or a DICOM series folder"),
    ("text file named .nii.gz", lambda d: touch(d / "t.nii.gz", "hello"),
     "not a readable NIfTI image (File {p} is not a gzip file); check that it is a complete .nii/.nii.gz file"),
    ("empty .nii", lambda d: touch(d / "e.nii"), "not a readable NIfTI image (Empty file"),
    ("text file named .mha", lambda d: touch(d / "t.mha", "hello"),
     "not a readable MHA image (Unable to determine ImageIO reader for \"{p}\"); check that it is a complete .mha "
     "file"),
    ("truncated .nii.gz", lambda d: truncated(save_nifti(d / "c.nii.gz", np.random.rand(20, 20, 20))),
     "the voxel data cannot be read (truncated or corrupt file: Compressed file ended before the end-of-stream "
     "marker was reached); copy or export the file again"),
    ("truncated .nii", lambda d: truncated(save_nifti(d / "c.nii", np.random.rand(20, 20, 20))),
     "the voxel data cannot be read (truncated or corrupt file: Expected 64000 bytes, got"),
    ("truncated .mha", lambda d: truncated(sitk_file(d / "c.mha", np.random.rand(20, 20, 20))),
     "the voxel data cannot be read (truncated or corrupt file, or a missing data file: File cannot be read"),
    ("truncated .nrrd", lambda d: truncated(sitk_file(d / "c.nrrd", np.random.rand(20, 20, 20))),
     "the voxel data cannot be read (truncated or corrupt file, or a missing data file: expected 64000 bytes but "
     "received"),
    ("singular affine", lambda d: raw_nifti(d / "s.nii", (4, 4, 4), sform=sing(), data=b"\0" * 128),
     "the affine is singular (voxel axes of 1, 1.2, 0 mm: a zero spacing or parallel axes), so voxels have no "
     "position in space; fix the header's pixdim and qform/sform"),
    ("NaN affine", lambda d: raw_nifti(d / "n.nii", (4, 4, 4), sform=np.where(np.eye(4) == 1, np.nan, 0) + np.eye(4) * 0,
                                       data=b"\0" * 128),
     "the affine (voxel -> world geometry) holds NaN or infinite values; fix the header's pixdim and qform/sform"),
    ("huge affine", lambda d: raw_nifti(d / "h.nii", (4, 4, 4), sform=np.diag([1e12, 1, 1, 1]), data=b"\0" * 128),
     "the affine holds 1e+12 mm, beyond any scanner's field of view (1e+06 mm); fix the header's pixdim and "
     "qform/sform"),
    ("MHA origin 'nan'", lambda d: mha_header(d / "o.mha", (4, 4, 4), ["Offset = 0 nan 0"], data=b"\0" * 128),
     "its header's Offset is '0 nan 0', not finite numbers; fix the header's spacing, origin and direction"),
    ("MHA zero spacing", lambda d: mha_header(d / "z.mha", (4, 4, 4), ["ElementSpacing = 1 0 1"], data=b"\0" * 128),
     "the affine is singular (voxel axes of 1, 0, 1 mm"),
    ("NaN / Inf voxels", lambda d: save_nifti(d / "nan.nii.gz", bad_voxels()),
     "4 of 216 voxel values are NaN or infinite; replace them (e.g. with 0) and retry"),
    ("float64 beyond float32", lambda d: save_nifti(d / "big.nii.gz", np.full((4, 4, 4), 1e300)),
     "64 of 64 voxel values are NaN or infinite"),
    ("4D time series (sec)", lambda d: time_series(d / "bold.nii.gz"),
     "is a 4D time series (shape (6, 6, 6, 5), one volume every 2 sec); the model segments one 3D volume with its "
     "channels on the 4th axis; save one time point as a 3D file and segment that (if the 4th axis holds "
     "channels, set pixdim[4] to 1)"),
    ("4D time series (msec)", lambda d: time_series(d / "dce.nii.gz", "msec", 1.0),
     "is a 4D time series (shape (6, 6, 6, 5), its 4th axis in msec)"),
    ("single slice", lambda d: save_nifti(d / "slice.nii.gz", phantom((8, 8, 1))),
     "is 2D (shape (8, 8, 1)); the model is 3D; give a volume with several slices along every axis, or allow "
     "single-slice images (allow_2d=True)"),
    ("2D NIfTI", lambda d: save_nifti(d / "xy.nii.gz", np.ones((8, 9), np.float32)), "is 2D (shape (8, 9)); the model is 3D"),
    ("2D MHA", lambda d: sitk_file(d / "xy.mha", np.ones((9, 8), np.float32)), "is 2D (shape (8, 9)); the model is 3D"),
    ("a line", lambda d: save_nifti(d / "line.nii.gz", np.ones((8, 1, 1), np.float32)),
     "is not a volume (shape (8, 1, 1): one voxel along 2 axes); give a 3D volume"),
    ("1D NIfTI", lambda d: save_nifti(d / "v.nii.gz", np.ones(8, np.float32)), "is 1D (shape (8,)); give a 3D volume"),
    ("empty axis", lambda d: raw_nifti(d / "e0.nii", (4, 0, 4)),
     "has an empty axis (shape (4, 0, 4)), so it holds no voxels; export it again"),
    ("4D MHA", lambda d: mha_header(d / "t.mha", (4, 4, 4, 3), data=b"\0" * 384),
     "image has 4 dimensions (size (4, 4, 4, 3)); expected a 3D image (several channels as a vector image or as one "
     "file per channel)"),
    ("5D NIfTI", lambda d: save_nifti(d / "5d.nii.gz", np.ones((4, 4, 4, 2, 3), np.float32)),
     "image has shape (4, 4, 4, 2, 3); expected 3D or 4D (channels last); give one 3D volume, its channels on the "
     "4th axis"),
    ("RGB NIfTI", lambda d: raw_nifti(d / "rgb.nii", (4, 4, 4), dtype="RGB", data=b"\0" * 192),
     "holds RGB colour voxels"),
    ("complex NIfTI", lambda d: save_nifti(d / "cx.nii.gz", np.ones((4, 4, 4), np.complex64)),
     "holds complex voxel values (complex64); give a magnitude image"),
    ("NIfTI header too big for memory", lambda d: raw_nifti(d / "huge.nii", BIG),
     "the image (30000x30000x30000 voxels, 1 channel(s)) needs 108.0 TB as float32 but only"),
    ("MHA header too big for memory", lambda d: mha_header(d / "huge.mha", BIG),
     "the image (30000x30000x30000 voxels, 1 channel(s)) needs 108.0 TB as float32 but only"),
]


@pytest.mark.parametrize("make,expected", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_files_are_one_sentence_naming_the_file(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(MedsegError) as e:
        read_scan(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: " + expected.format(p=path)), msg


def test_memory_is_checked_from_the_header_before_the_voxels(tmp_path):
    """The header claims 108 TB and the file holds none of it: the refusal is the memory check's."""
    for path in (raw_nifti(tmp_path / "huge.nii.gz", BIG), mha_header(tmp_path / "huge.mha", BIG),
                 mha_header(tmp_path / "huge4.mha", (3000, 3000, 3000), ["ElementNumberOfChannels = 4"])):
        with pytest.raises(MedsegError, match="as float32 but only .* of memory is available; crop or downsample"):
            read_scan(path)
    assert estimate_bytes((600, 600, 600), 4) == 600**3 * 4 * 4  # the 600³ 4-channel scan: 3.5 GB as float32
    assert estimate_bytes((10, 10, 10), 2, np.float16) == 4000
    avail = available_memory()
    assert avail is not None and 0 < avail <= int(open("/proc/meminfo").read().split()[1]) * 1024
    assert check_memory("x", (10, 10, 10), 1, available=4000) == 4000
    with pytest.raises(MedsegError, match=r"^x: the image \(600x600x600 voxels, 4 channel\(s\)\) needs 10.4 GB with "
                                          r"preprocessing but only 8.0 GB of memory is available"):
        check_memory("x", (600, 600, 600), 4, factor=3.0, available=8 * 10**9, what="with preprocessing")
    assert format_bytes(3_456_000_000) == "3.5 GB" and format_bytes(512) == "512 B"


def test_headers_are_checked_before_any_voxel_is_read(tmp_path):
    """Grids and the channel count of per-channel files come from their headers: a truncated file on another
    grid is refused for its grid, a truncated file for its channel count."""
    a = save_nifti(tmp_path / "c_0000.nii.gz", phantom((10, 10, 6)))
    b = truncated(save_nifti(tmp_path / "c_0001.nii.gz", np.random.rand(10, 10, 7).astype(np.float32)))
    with pytest.raises(MedsegError, match=r"c_0001.nii.gz: shape \(10, 10, 7\) differs from .*c_0000.nii.gz "
                                          r"\(10, 10, 6\); channels must share one grid"):
        read_scan([a, b])
    t = truncated(save_nifti(tmp_path / "t.nii.gz", np.random.rand(10, 10, 6).astype(np.float32)))
    with pytest.raises(MedsegError, match=r"t.nii.gz: has 1 channel\(s\) but the model expects 4; give one file per "
                                          r"channel"):
        read_scan(t, channels=4)


def test_per_channel_files_on_other_grids_are_refused(tmp_path):
    a = save_nifti(tmp_path / "c_0000.nii.gz", phantom((10, 10, 6)))
    b = save_nifti(tmp_path / "c_0001.nii.gz", phantom((10, 10, 6)), make_affine("RAS", (1.0, 1.2, 2.5)))
    c = sitk_file(tmp_path / "c_0002.mha", phantom((6, 10, 10)), spacing=(1.0, 1.2, 2.5))  # LPS, no origin
    d = save_nifti(tmp_path / "c_0003.nii.gz", phantom((10, 10, 7)))
    with pytest.raises(MedsegError, match=r"c_0001.nii.gz: its geometry \(affine\) differs from .*c_0000.nii.gz; "
                                          "channels must share one grid"):
        read_scan([a, b])
    with pytest.raises(MedsegError, match=r"c_0002.mha: its geometry \(affine\) differs"):
        read_scan([a, c])
    with pytest.raises(MedsegError, match=r"c_0003.nii.gz: shape \(10, 10, 7\) differs"):
        read_scan([a, d])
    # the same grid in two formats is one grid
    same = sitk.ReadImage(str(a))
    sitk.WriteImage(same, str(tmp_path / "c_0004.nrrd"))
    scan = read_scan([a, tmp_path / "c_0004.nrrd"], channels=2)
    assert scan.data.shape == (2, 10, 10, 6)
    np.testing.assert_array_equal(scan.data[0], scan.data[1])


def test_a_4d_file_holds_channels_unless_its_header_says_time(tmp_path):
    """The Medical Segmentation Decathlon (and ITK) write 4D channel files with the unit 'sec' and pixdim[4] 1:
    channels. A vector intent is channels whatever the step; a step of 2 sec is a time series."""
    data = np.stack([phantom((8, 8, 6)) * (c + 1) for c in range(4)], -1)
    msd = nib.Nifti1Image(data, AFF)
    msd.header.set_xyzt_units("mm", "sec")
    nib.save(msd, tmp_path / "msd.nii.gz")
    scan = read_scan(tmp_path / "msd.nii.gz", channels=4)
    np.testing.assert_array_equal(scan.data, np.moveaxis(data, -1, 0))
    time_series(tmp_path / "vec.nii.gz", step=2.0, intent="vector")
    assert read_scan(tmp_path / "vec.nii.gz").data.shape == (5, 6, 6, 6)
    five = nib.Nifti1Image(data[..., None, :], AFF)  # the NIfTI vector form (X, Y, Z, 1, C)
    nib.save(five, tmp_path / "five.nii.gz")
    np.testing.assert_array_equal(read_scan(tmp_path / "five.nii.gz").data, scan.data)
    vector = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0, 3))), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "vec.mha"))
    np.testing.assert_array_equal(read_scan(tmp_path / "vec.mha").data, scan.data)
    with pytest.raises(MedsegError, match="is a 4D time series"):
        read_scan(time_series(tmp_path / "bold.nii.gz", step=0.8))
    with pytest.raises(MedsegError, match="slice timing of 0.05"):
        img = nib.Nifti1Image(np.ones((6, 6, 6, 5), np.float32), AFF)
        img.header.set_xyzt_units("mm", "sec")
        img.header["slice_duration"] = 0.05
        nib.save(img, tmp_path / "st.nii.gz")
        read_scan(tmp_path / "st.nii.gz")


def test_single_slice_images_when_allowed(tmp_path):
    """allow_2d reads a single slice as a one-slice volume, and a label map written for it has its grid."""
    one = save_nifti(tmp_path / "one.nii.gz", phantom((8, 9, 1)))
    flat = save_nifti(tmp_path / "flat.nii.gz", phantom((8, 9, 1))[..., 0])
    mha = sitk_file(tmp_path / "xy.mha", phantom((1, 9, 8))[0], spacing=(0.7, 0.9))
    for path in (one, flat, mha):
        with pytest.raises(MedsegError, match="is 2D"):
            read_scan(path)
        scan = read_scan(path, allow_2d=True)
        assert scan.shape == (8, 9, 1)
    np.testing.assert_array_equal(read_scan(flat, allow_2d=True).data, read_scan(one, allow_2d=True).data)
    scan = read_scan(mha, allow_2d=True)
    np.testing.assert_allclose(np.abs(np.diag(scan.affine))[:2], [0.7, 0.9])
    image_writer(np.ones(scan.shape, np.uint8), scan, "mha")(str(tmp_path / "lab.mha"))
    back = sitk.ReadImage(str(tmp_path / "lab.mha"))
    assert back.GetSize() == (8, 9, 1) and back.GetSpacing()[:2] == (0.7, 0.9)
    scan = read_scan(one, allow_2d=True)
    image_writer(np.ones(scan.shape, np.uint8), scan, "nifti")(str(tmp_path / "lab.nii.gz"))
    back = nib.load(tmp_path / "lab.nii.gz")
    assert back.shape == (8, 9, 1)
    np.testing.assert_allclose(back.affine, AFF)
    arr = scan_from_image(phantom((8, 9, 1)), AFF, allow_2d=True)
    assert arr.shape == (8, 9, 1)
    assert scan_from_image(phantom((8, 9, 1))[..., 0], AFF, allow_2d=True).shape == (8, 9, 1)
    with pytest.raises(MedsegError, match=r"numpy image: is 2D \(shape \(8, 9, 1\)\)"):
        scan_from_image(phantom((8, 9, 1)), AFF)


def test_scl_slope_is_applied_as_nibabel_does(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    raw_nifti(tmp_path / "s.nii", data.shape, sform=AFF, data=data.tobytes(order="F"), scl=(0.5, -3.0))
    loaded = nib.load(tmp_path / "s.nii")
    assert (loaded.dataobj.slope, loaded.dataobj.inter) == (0.5, -3.0)
    np.testing.assert_array_equal(read_scan(tmp_path / "s.nii").data[0], loaded.get_fdata(dtype=np.float32))


API_CASES = [  # (affine, message after "numpy image: ")
    (None, "no affine given; a numpy array carries no geometry: pass affine= (the 4x4 voxel -> RAS mm matrix, e.g. "
           "nibabel's img.affine), or give the nibabel/SimpleITK image or the file"),
    (sing(), "the affine is singular (voxel axes of 1, 1.2, 0 mm: a zero spacing or parallel axes), so voxels have no "
             "position in space; pass an invertible 4x4 voxel -> RAS mm affine="),
    (np.full((4, 4), np.nan), "the affine (voxel -> world geometry) holds NaN or infinite values"),
    (np.diag([1e9, 1, 1, 1]), "the affine holds 1e+09 mm, beyond any scanner's field of view"),
    (np.eye(3), "the affine must be 4x4, got shape (3, 3)"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]), "the affine's last row is [0.0, 0.0, 1.0, 1.0]"),
    ("eye", "the affine is not a 4x4 matrix of numbers"),
]


@pytest.mark.parametrize("affine,expected", API_CASES, ids=["none", "singular", "nan", "huge", "3x3", "row", "str"])
def test_api_affines_are_checked(affine, expected):
    with pytest.raises(MedsegError) as e:
        scan_from_image(phantom((8, 8, 8)), affine)
    assert str(e.value).startswith("numpy image: " + expected), str(e.value)
    # through the Python API: before, the identity was assumed (None) or MONAI raised a RuntimeError
    with pytest.raises(MedsegError) as e:
        segmenter().predict(phantom((8, 8, 8)), affine=affine)
    assert str(e.value).startswith("numpy image: " + expected), str(e.value)


def test_in_memory_images_are_checked_like_files():
    x = bad_voxels()
    with pytest.raises(MedsegError, match=r"^numpy image: 4 of 216 voxel values are NaN or infinite"):
        scan_from_image(x, AFF)
    with pytest.raises(MedsegError, match=r"^nibabel image: 4 of 216 voxel values"):
        scan_from_image(nib.Nifti1Image(x, AFF))
    with pytest.raises(MedsegError, match=r"^SimpleITK image: 4 of 216 voxel values"):
        scan_from_image(sitk.GetImageFromArray(x))
    with pytest.raises(MedsegError, match=r"^nibabel image: is 2D \(shape \(6, 6, 1\)\)"):
        scan_from_image(nib.Nifti1Image(phantom((6, 6, 1)), AFF))
    with pytest.raises(MedsegError, match=r"^nibabel image: the affine is singular"):
        scan_from_image(nib.Nifti1Image(phantom((6, 6, 6)), None, header=_singular_header()))
    with pytest.raises(MedsegError, match=r"^numpy image: holds <U1 values; give real numbers"):
        scan_from_image(np.full((4, 4, 4), "a"), AFF)
    with pytest.raises(MedsegError, match=r"^numpy image: expected \(X, Y, Z\) or \(C, X, Y, Z\), got shape"):
        scan_from_image(np.ones((2, 2, 4, 4, 4)), AFF)
    scan = scan_from_image(phantom((6, 7, 8)), AFF)
    assert scan.shape == (6, 7, 8) and np.array_equal(scan.affine, AFF)


def _singular_header():
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((6, 6, 6))
    hdr.set_sform(sing(), 1)
    return hdr


# ---- label maps ---------------------------------------------------------------------------------------------
def labels_array(shape=(10, 9, 6)):
    return (np.indices(shape).sum(0) % 3).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd", "mha"])
def test_labels_in_every_format_with_their_images_grid(tmp_path, fmt):
    image = save_nifti(tmp_path / "img.nii.gz", phantom((10, 9, 6)))
    scan = read_scan(image)
    lab = labels_array()
    image_writer(lab, scan, "nifti" if fmt == "nii.gz" else fmt)(str(tmp_path / f"lab.{fmt}"))
    got = read_label(tmp_path / f"lab.{fmt}", like=scan)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, lab)
    # nnU-Net raw datasets in .mha / .nrrd: image and label in the same format
    if fmt != "nii.gz":
        image_writer(phantom((10, 9, 6)), scan, fmt)(str(tmp_path / f"img2.{fmt}"))
        scan2 = read_scan(tmp_path / f"img2.{fmt}")
        np.testing.assert_array_equal(read_label(tmp_path / f"lab.{fmt}", like=scan2), lab)


def test_label_errors(tmp_path):
    scan = read_scan(save_nifti(tmp_path / "img.nii.gz", phantom((10, 9, 6))))
    other = save_nifti(tmp_path / "shape.nii.gz", labels_array((10, 9, 7)))
    with pytest.raises(MedsegError, match=r"shape.nii.gz: label shape \(10, 9, 7\) differs from its image's "
                                          r"\(10, 9, 6\); the label must be on its image's voxel grid"):
        read_label(other, like=scan)
    moved = save_nifti(tmp_path / "moved.nii.gz", labels_array(), make_affine("LPS", (1.0, 1.2, 2.5), origin=(0, 0, 0)))
    with pytest.raises(MedsegError, match=r"moved.nii.gz: label geometry \(affine\) differs from its image's "
                                          r"\(.*img.nii.gz\); resample the label onto its image's grid"):
        read_label(moved, like=scan)
    half = save_nifti(tmp_path / "half.nii.gz", labels_array().astype(np.float32) + 0.5)
    with pytest.raises(MedsegError, match=r"half.nii.gz: a label map must hold integers, found 0.5; give the label "
                                          "map, not an image or a probability map"):
        read_label(half)
    four = save_nifti(tmp_path / "four.nii.gz", np.stack([labels_array()] * 2, -1))
    with pytest.raises(MedsegError, match=r"four.nii.gz: a label map must be 3D with one channel, got shape "
                                          r"\(10, 9, 6, 2\)"):
        read_label(four)
    nan = labels_array().astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(MedsegError, match=r"nan.nii.gz: 1 label values are NaN or infinite"):
        read_label(save_nifti(tmp_path / "nan.nii.gz", nan))
    with pytest.raises(MedsegError, match=r"missing.mha: file not found"):
        read_label(tmp_path / "missing.mha")
    with pytest.raises(MedsegError, match=r"trunc.nrrd: the voxel data cannot be read"):
        read_label(truncated(sitk_file(tmp_path / "trunc.nrrd", labels_array().T.copy()), keep=0.9))
    # tolerance as before: 1e-4 mm apart is one grid; a float label holding whole numbers is a label
    near = AFF.copy()
    near[:3, 3] += 1e-4
    ok = save_nifti(tmp_path / "ok.nii.gz", labels_array().astype(np.float32), near)
    np.testing.assert_array_equal(read_label(ok, like=scan), labels_array())
    # a label written with a scale factor (as some tools do) is read scaled
    raw_nifti(tmp_path / "scaled.nii", (10, 9, 6), sform=AFF, scl=(2.0, 0.0),
              data=labels_array().astype(np.int16).tobytes(order="F"))
    np.testing.assert_array_equal(read_label(tmp_path / "scaled.nii"), labels_array() * 2)


def test_read_label_is_the_one_from_nifti(tmp_path):
    """medseg3d.io.nifti.read_label (imported by the data layer and the pipelines) is the same reader."""
    from medseg3d.io.nifti import read_label as nifti_read_label

    path = tmp_path / "lab.mha"
    sitk_file(path, labels_array().transpose(2, 1, 0).copy())
    np.testing.assert_array_equal(nifti_read_label(path), labels_array())
