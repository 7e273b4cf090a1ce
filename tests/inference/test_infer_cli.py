"""`medseg3d infer` and `medseg3d export` end to end with tiny random-initialised checkpoints: DICOM series in
-> DICOM-SEG out, nnU-Net and BraTS folders, TTA and ensembles, probabilities and uncertainty, reports,
postprocessing flags, ONNX export, and one-line errors that leave nothing on disk."""

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from helpers import BRATS_CHANNELS, BRATS_LABELS, make_affine, phantom, tiny_checkpoint
from typer.testing import CliRunner

from medseg3d.cli import app
from medseg3d.data.synthetic import make_brats_phantom, write_brats_folders, write_nnunet_dataset
from medseg3d.inference.segmenter import Segmenter
from medseg3d.io.dicom import write_dicom_series

runner = CliRunner()
SHAPE = (30, 26, 12)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, text):
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], r.output


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"a": tiny_checkpoint(d / "a.pt", seed=0), "b": tiny_checkpoint(d / "b.pt", seed=1),
            "brats": tiny_checkpoint(d / "brats.pt", BRATS_CHANNELS, BRATS_LABELS, spacing=(8.0, 8.0, 8.0)),
            "other_labels": tiny_checkpoint(d / "o.pt", labels={"background": 0, "thing": 1})}


@pytest.fixture()
def nifti_scan(tmp_path):
    affine = make_affine("LAS", (1.0, 1.3, 2.0), 17.0)
    img = nib.Nifti1Image(phantom(SHAPE), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, tmp_path / "scan.nii.gz")
    return tmp_path / "scan.nii.gz"


def test_dicom_series_in_dicom_seg_out(tmp_path, ckpts):
    write_dicom_series(phantom(SHAPE), make_affine("LAS", (1.0, 1.3, 2.0), 17.0), tmp_path / "series")
    r = invoke("infer", tmp_path / "series", "-m", ckpts["a"], "-o", tmp_path / "out", "--save-uncertainty", "entropy")
    assert r.exit_code == 0, r.output
    seg_ds = pydicom.dcmread(tmp_path / "out" / "series.dcm")
    assert seg_ds.Modality == "SEG" and seg_ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert [s.SegmentLabel for s in seg_ds.SegmentSequence] == ["object"]
    report = json.loads((tmp_path / "out" / "series.json").read_text())
    # one frame per slice holding the segment (highdicom leaves out empty frames)
    pred = Segmenter.from_checkpoint(ckpts["a"]).predict(tmp_path / "series")
    arr = sitk.GetArrayFromImage(pred)  # (Z, Y, X)
    assert int(seg_ds.NumberOfFrames) == int((arr == 3).any(axis=(1, 2)).sum()) > 0
    assert report["labels"]["object"]["voxels"] == int((arr == 3).sum())
    source = {d.SOPInstanceUID for d in map(pydicom.dcmread, (tmp_path / "series").iterdir())}
    refs = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in seg_ds.PerFrameFunctionalGroupsSequence}
    assert refs <= source
    unc = sitk.ReadImage(str(tmp_path / "out" / "series_uncertainty.nii.gz"))
    series = sitk.ImageSeriesReader()
    series.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    ref = series.Execute()
    assert unc.GetSize() == ref.GetSize()
    np.testing.assert_allclose(unc.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(unc.GetDirection(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(unc.GetSpacing(), ref.GetSpacing(), atol=1e-5)

    r = invoke("infer", tmp_path / "series", "-m", ckpts["a"], "-o", tmp_path / "out2", "--format", "mha")
    assert r.exit_code == 0, r.output
    assert sitk.ReadImage(str(tmp_path / "out2" / "series.mha")).GetSize() == SHAPE


def test_report_volumes_and_outputs(tmp_path, ckpts, nifti_scan):
    out = tmp_path / "out"
    r = invoke("infer", nifti_scan, "-m", ckpts["a"], "-o", out, "--format", "nrrd", "--save-probs")
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {"scan.nrrd", "scan_probs.npz", "scan.png", "scan.json"}
    rep = json.loads((out / "scan.json").read_text())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "scan.nrrd")))
    voxel_mm3 = abs(np.linalg.det(nib.load(nifti_scan).affine[:3, :3]))
    assert rep["voxel_volume_mm3"] == pytest.approx(voxel_mm3)
    for name, value in {"background": 0, "object": 3}.items():
        entry = rep["labels"][name]
        assert entry["value"] == value and entry["voxels"] == int((labels == value).sum())
        assert entry["volume_ml"] == pytest.approx(entry["voxels"] * voxel_mm3 / 1000)
    assert sum(e["voxels"] for e in rep["labels"].values()) == labels.size
    assert rep["model"]["name"] == "unet" and rep["model"]["checkpoints"] == [str(ckpts["a"])]
    assert rep["device"] == "cpu" and rep["tta"] is False and rep["runtime_s"] > 0
    assert rep["inputs"] == [str(nifti_scan)] and str(out / "scan.nrrd") in rep["outputs"]
    probs = np.load(out / "scan_probs.npz")
    assert probs["probabilities"].dtype == np.float16 and probs["probabilities"].shape == (2,) + SHAPE
    np.testing.assert_allclose(probs["probabilities"].astype(np.float32).sum(0), 1, atol=2e-3)
    np.testing.assert_allclose(probs["affine"], nib.load(nifti_scan).affine)


def test_tta_and_ensemble_change_probabilities_not_geometry(tmp_path, ckpts, nifti_scan):
    runs = {"plain": ["-m", ckpts["a"]], "tta": ["-m", ckpts["a"], "--tta"],
            "ensemble": ["-m", ckpts["a"], "-m", ckpts["b"], "--save-uncertainty", "variance"]}
    probs = {}
    for name, args in runs.items():
        r = invoke("infer", nifti_scan, *args, "-o", tmp_path / name, "--save-probs", "--no-preview")
        assert r.exit_code == 0, r.output
        probs[name] = np.load(tmp_path / name / "scan_probs.npz")["probabilities"].astype(np.float32)
        img, src = nib.load(tmp_path / name / "scan.nii.gz"), nib.load(nifti_scan)
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-6)
    assert json.loads((tmp_path / "tta" / "scan.json").read_text())["passes"] == 8
    for name in ("tta", "ensemble"):
        assert probs[name].shape == probs["plain"].shape
        assert np.abs(probs[name] - probs["plain"]).max() > 1e-3, name
    var = nib.load(tmp_path / "ensemble" / "scan_uncertainty.nii.gz")
    assert var.shape == SHAPE and np.asarray(var.dataobj).max() > 0
    np.testing.assert_allclose(var.affine, nib.load(nifti_scan).affine, atol=1e-6)


def test_nnunet_and_brats_folders(tmp_path, ckpts):
    write_nnunet_dataset(tmp_path / "nn", num_training=0, num_test=2, shape=(24, 24, 24))
    write_brats_folders(tmp_path / "brats", num_cases=1, shape=(24, 24, 24))
    r = invoke("infer", tmp_path / "nn" / "imagesTs", "-m", ckpts["brats"], "-o", tmp_path / "o1", "--no-preview")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o1").glob("*.nii.gz")) == ["BRATS_001.nii.gz", "BRATS_002.nii.gz"]
    r = invoke("infer", tmp_path / "brats", "-m", ckpts["brats"], "-o", tmp_path / "o2", "--no-preview")
    assert r.exit_code == 0, r.output
    out = nib.load(tmp_path / "o2" / "BraTS_001.nii.gz")
    src = nib.load(tmp_path / "brats" / "BraTS_001" / "BraTS_001_t1.nii.gz")
    np.testing.assert_allclose(out.affine, src.affine)
    # per-channel files given in another order are put in the checkpoint's order
    case = tmp_path / "brats" / "BraTS_001"
    shuffled = [case / f"BraTS_001_{s}.nii.gz" for s in ("flair", "t2", "t1", "t1ce")]
    r = invoke("infer", *shuffled, "-m", ckpts["brats"], "-o", tmp_path / "o3", "--no-preview")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "o3" / "BraTS_001.nii.gz").dataobj),
                                  np.asarray(out.dataobj))


def test_postprocessing_flags_override_the_config(tmp_path, ckpts, nifti_scan):
    r = invoke("infer", nifti_scan, "-m", ckpts["a"], "-o", tmp_path / "o", "--largest-component", "--fill-holes",
               "--no-preview")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "o" / "scan.json").read_text())
    assert rep["labels"]["object"]["components"] <= 1
    r = invoke("infer", nifti_scan, "-m", ckpts["a"], "-o", tmp_path / "p", "--relabel", "object:nothing:1")
    one_line_error(r, "postprocess.relabel: unknown class 'nothing'")
    r = invoke("infer", nifti_scan, "-m", ckpts["a"], "-o", tmp_path / "p", "--relabel", "object:1")
    one_line_error(r, "expected SOURCE:TARGET:ML")
    assert not (tmp_path / "p").exists()


def test_onnx_export_gives_the_same_labels_as_pytorch(tmp_path, ckpts, nifti_scan):
    onnx_file = tmp_path / "model.onnx"
    r = invoke("export", ckpts["a"], "--format", "onnx", "-o", onnx_file)
    assert r.exit_code == 0, r.output
    torch_labels = Segmenter.from_checkpoint(ckpts["a"], device="cpu").predict(nifti_scan)
    onnx_seg = Segmenter.from_checkpoint(onnx_file, device="cpu")  # an ONNX Runtime session in the same window
    onnx_labels = onnx_seg.predict(nifti_scan)
    np.testing.assert_array_equal(np.asarray(onnx_labels.dataobj), np.asarray(torch_labels.dataobj))

    ts_file = tmp_path / "model.pt"
    r = invoke("export", ckpts["a"], "--format", "torchscript", "-o", ts_file)
    assert r.exit_code == 0, r.output
    extra = {"medseg3d.json": ""}
    scripted = torch.jit.load(str(ts_file), _extra_files=extra)
    assert json.loads(extra["medseg3d.json"])["labels"] == {"background": 0, "object": 3}
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(scripted(x), Segmenter.from_checkpoint(ckpts["a"]).members[0].model(x))
    one_line_error(invoke("export", ckpts["a"], "--format", "tflite", "-o", tmp_path / "m.tfl"),
                   "unknown export format 'tflite'")


def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path, ckpts, nifti_scan):
    out = tmp_path / "out"
    one_line_error(invoke("infer", nifti_scan, "-m", ckpts["brats"], "-o", out),
                   "scan.nii.gz: has 1 channel(s) but the model expects 4")
    image, _ = make_brats_phantom((16, 16, 16))
    for c in range(4):
        aff = make_affine("RAS" if c < 3 else "LPS", (2, 2, 2))
        nib.save(nib.Nifti1Image(image[c], aff), tmp_path / f"mixed_{c:04d}.nii.gz")
    one_line_error(invoke("infer", *[tmp_path / f"mixed_{c:04d}.nii.gz" for c in range(4)], "-m", ckpts["brats"],
                          "-o", out), "mixed_0003.nii.gz: its geometry (affine) differs")
    one_line_error(invoke("infer", tmp_path / "mixed_0000.nii.gz", "-m", ckpts["brats"], "-o", out),
                   "case 'mixed' lacks channel(s) 0001 (T1ce), 0002 (T2), 0003 (FLAIR)")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    one_line_error(invoke("infer", tmp_path / "junk", "-m", ckpts["a"], "-o", out),
                   "junk: not a DICOM series, an nnU-Net folder")
    (tmp_path / "baddicom").mkdir()
    (tmp_path / "baddicom" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 20)
    one_line_error(invoke("infer", tmp_path / "baddicom", "-m", ckpts["a"], "-o", out), "baddicom: no readable DICOM")
    one_line_error(invoke("infer", nifti_scan, "-m", ckpts["a"], "-m", ckpts["other_labels"], "-o", out),
                   "o.pt: its labels {'background': 0, 'thing': 1} differ from")
    one_line_error(invoke("infer", nifti_scan, "-m", ckpts["a"], "-o", out, "--format", "dicom-seg"),
                   "scan.nii.gz: DICOM-SEG output needs a DICOM series")
    one_line_error(invoke("infer", nifti_scan, "-m", ckpts["a"], "-o", out, "--save-uncertainty", "variance"),
                   "variance needs several passes")
    one_line_error(invoke("infer", nifti_scan, "-m", ckpts["a"], "-o", tmp_path), "would overwrite an input")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.glob("scan*")) == ["scan.nii.gz"]
