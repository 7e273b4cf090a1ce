"""`medseg3d export --format monai-bundle`: the bundle runs with `python -m monai.bundle run` in a Python where
medseg3d cannot be imported, and writes the label maps `medseg3d infer` writes (same geometry, the same labels);
its preprocessing and postprocessing equal medseg3d's; region and 2D models; refusals; TorchScript export
without tracer warnings."""

import json
import os
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import BRATS_CHANNELS, BRATS_LABELS, tiny_checkpoint
from medseg3d.bundle import Head, ModelContract, load_model, save_checkpoint
from medseg3d.cli import app
from medseg3d.config import load_config
from medseg3d.errors import MedsegError
from medseg3d.inference.export import export_checkpoint
from medseg3d.models import build_model

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "tests" / "fixtures" / "checkpoint_v1.pt"
SCAN = REPO / "data_samples" / "imagesTs" / "BRATS_007.nii.gz"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def infer(model, scans, out: Path) -> None:
    r = invoke("infer", *scans, "-m", model, "-o", out, "--no-preview", "--no-report", "--device", "cpu")
    assert r.exit_code == 0, r.output


def isolated_env(tmp_path: Path) -> dict:
    """An environment for ``python -S``: no site processing (so the editable install's path hook is not
    loaded), the venv's site-packages on PYTHONPATH, the repository nowhere on the path."""
    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=os.pathsep.join(sorted(site)), OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    return env


def run_isolated(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def compare(ours: Path, theirs: Path) -> float:
    """The share of equal voxels of two label maps, after checking that they have the same grid."""
    a, b = nib.load(ours), nib.load(theirs)
    assert a.shape == b.shape
    assert np.allclose(a.affine, b.affine, atol=1e-4)
    x, y = np.asarray(a.dataobj), np.asarray(b.dataobj)
    assert np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)
    return float((x == y).mean())


def test_the_bundle_runs_without_medseg3d_and_writes_what_infer_writes(tmp_path):
    pytest.importorskip("fire", reason="python -m monai.bundle needs fire (a test dependency)")
    bundle = tmp_path / "bundle"
    r = invoke("export", V1, "--format", "monai-bundle", "-o", bundle)
    assert r.exit_code == 0, r.output
    for f in ("configs/metadata.json", "configs/inference.json", "models/model.ts", "docs/README.md"):
        assert (bundle / f).is_file(), f
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 4
    assert list(fmt["inputs"]["image"]["channel_def"].values()) == BRATS_CHANNELS
    assert list(fmt["outputs"]["pred"]["channel_def"].values()) == list(BRATS_LABELS)
    assert meta["medseg3d"]["labels"] == BRATS_LABELS
    readme = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run --config_file" in readme and "| 4 | enhancing |" in readme

    # inputs: the sample scan (3.5 mm, LPS-like) and the same voxels in another axis order with anisotropic
    # spacing (so reorientation and resampling are undone differently)
    scans = tmp_path / "scans"
    scans.mkdir()
    img = nib.load(SCAN)
    (scans / SCAN.name).symlink_to(SCAN)
    data = np.transpose(np.asarray(img.dataobj), (2, 0, 1, 3))[:, ::-1]
    aff = img.affine[:, [2, 0, 1, 3]].copy()
    aff[:3, 1] *= -1
    aff[:3, 3] -= aff[:3, 1] * (data.shape[1] - 1)
    aff[:3, 0] *= 2.5 / 3.5
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), scans / "moved.nii.gz")

    env = isolated_env(tmp_path)
    work = tmp_path / "elsewhere"  # neither the repository nor the bundle
    work.mkdir()
    probe = run_isolated(["-c", "import importlib.util, os, sys; print(importlib.util.find_spec('medseg3d')); "
                                "print([p for p in sys.path if os.path.isdir(os.path.join(p or '.', 'medseg3d'))])"],
                         env, work)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["None", "[]"], probe.stdout  # medseg3d cannot be imported there
    out = tmp_path / "bundle_out"
    run = run_isolated(["-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
                        "--dataset_dir", str(scans), "--output_dir", str(out)], env, work)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "medseg3d" not in run.stderr.replace(str(bundle), "")

    infer(V1, [SCAN, scans / "moved.nii.gz"], tmp_path / "infer_out")
    for case in ("BRATS_007", "moved"):
        agree = compare(out / f"{case}_seg.nii.gz", tmp_path / "infer_out" / f"{case}.nii.gz")
        assert agree >= 0.999, (case, agree)
        src = nib.load(scans / f"{case}.nii.gz")
        seg = nib.load(out / f"{case}_seg.nii.gz")
        assert seg.shape == src.shape[:3] and np.allclose(seg.affine, src.affine, atol=1e-4)
    labels = np.asarray(nib.load(out / "BRATS_007_seg.nii.gz").dataobj)
    assert set(np.unique(labels).tolist()) <= set(BRATS_LABELS.values()) and (labels > 0).any()


def _parse(bundle: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser.read_meta(bundle / "configs" / "metadata.json")
    return parser


def _run_in_process(bundle: Path, scans: list[Path], out: Path) -> None:
    """The bundle's own run expression, in this process (the isolation is checked above)."""
    parser = _parse(bundle)
    parser["datalist"] = [str(s) for s in scans]
    parser["output_dir"] = str(out)
    parser["device"] = "$torch.device('cpu')"
    grad = torch.is_grad_enabled()
    try:
        for key in ("initialize", "run"):
            parser.get_parsed_content(key)
    finally:
        torch.set_grad_enabled(grad)


@pytest.mark.parametrize("normalize", ["zscore_nonzero", "zscore", "ct", "none"])
def test_the_bundle_preprocessing_equals_medseg3d(tmp_path, normalize):
    from monai import transforms as mt

    from medseg3d.data.transforms import preprocess_transforms, scan_to_metatensor
    from medseg3d.io.readers import read_scan

    stats = [{"lower": 5.0 * c, "upper": 300.0 + c, "mean": 90.0 + c, "std": 40.0 + c} for c in range(4)]
    over = {"preprocess": {"spacing": [3.0, 2.5, 4.0], "normalize": normalize,
                           **({"intensity_stats": stats} if normalize == "ct" else {})}}
    contract = load_model(V1)
    raw = contract.config.model_dump()
    for k, v in over.items():
        raw[k].update(v)
    contract.config = load_config(raw)
    from medseg3d.inference.monai_bundle import write_monai_bundle

    write_monai_bundle(contract, tmp_path / "b")
    ours = _parse(tmp_path / "b").get_parsed_content("preprocessing")({"image": str(SCAN)})["image"]
    ref = mt.Compose(preprocess_transforms(contract.config, keys=("image",)))(
        {"image": scan_to_metatensor(read_scan(SCAN))})["image"]
    assert ours.shape == ref.shape
    assert np.allclose(ours.affine.numpy(), ref.affine.numpy(), atol=1e-5)
    assert torch.allclose(ours.as_tensor(), ref.as_tensor(), atol=1e-4)


def test_the_bundle_postprocessing_equals_medseg3d(tmp_path):
    from monai.data import MetaTensor

    from medseg3d.config import PostprocessConfig
    from medseg3d.inference.postprocess import postprocess

    contract = load_model(V1)
    post = {"min_component_ml": 0.05, "largest_component": True, "fill_holes": True,
            "relabel": {"source": "enhancing", "target": "necrotic", "below_ml": 0.3}}
    contract.config.postprocess = PostprocessConfig.model_validate(post)
    from medseg3d.inference.monai_bundle import write_monai_bundle

    bundle = write_monai_bundle(contract, tmp_path / "b")
    assert (bundle / "scripts" / "postprocess.py").is_file()
    parser = _parse(bundle)
    step = parser.get_parsed_content("postprocessing").transforms[-2]  # the one before SaveImaged
    rng = np.random.default_rng(0)
    lab = np.zeros((30, 28, 26), np.int32)
    for value, n in ((2, 60), (1, 25), (4, 12)):
        for c in rng.integers(2, 24, size=(n, 3)):
            r = rng.integers(1, 3)
            lab[c[0] - r:c[0] + r, c[1] - r:c[1] + r, c[2] - r:c[2] + r] = value
    lab[10:14, 10:14, 10:14] = 2
    lab[11:13, 11:13, 11:13] = 0  # a hole
    affine = np.diag([1.5, 2.0, 1.2, 1.0])
    x = MetaTensor(torch.as_tensor(lab[None], dtype=torch.float32), affine=torch.as_tensor(affine))
    got = step({"pred": x})["pred"][0].numpy().astype(np.int32)
    ref = postprocess(lab, contract.config.postprocess, BRATS_LABELS, float(np.prod([1.5, 2.0, 1.2])))
    assert not np.array_equal(ref, lab)  # the steps changed the map: the comparison is not vacuous
    np.testing.assert_array_equal(got, ref)


def test_a_region_model_is_painted_back_as_labels(tmp_path):
    regions = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    cfg = load_config({"data": {"root": "."}, "preprocess": {"spacing": [4.0, 4.0, 4.0]},
                       "model": {"name": "unet", "params": {"base_filters": 4, "depth": 2, "norm": "instance"}},
                       "train": {"patch_size": [16, 16, 16]}, "infer": {"overlap": 0.25}})
    torch.manual_seed(3)
    net = build_model("unet", 3, 4, 3, base_filters=4, depth=2, norm="instance")
    with torch.no_grad():  # push the sigmoids away from 0.5 so the comparison is not about ties
        net.state_dict()[[k for k in net.state_dict() if k.endswith("bias")][-1]].copy_(torch.tensor([1., 0., -1.]))
    ck = save_checkpoint(ModelContract(cfg, {"": Head(BRATS_CHANNELS, BRATS_LABELS, regions)}, (0, 1, 2),
                                       net.state_dict()), tmp_path / "regions.pt")
    bundle = export_checkpoint(ck, "monai-bundle", tmp_path / "b")
    _run_in_process(bundle, [SCAN], tmp_path / "out")
    infer(ck, [SCAN], tmp_path / "ref")
    agree = compare(tmp_path / "out" / "BRATS_007_seg.nii.gz", tmp_path / "ref" / "BRATS_007.nii.gz")
    assert agree >= 0.999, agree
    labels = np.asarray(nib.load(tmp_path / "out" / "BRATS_007_seg.nii.gz").dataobj)
    assert len(set(np.unique(labels).tolist()) - {0}) >= 2  # several regions painted, not one constant


def test_a_2d_model_runs_slice_by_slice(tmp_path):
    cfg = load_config({"data": {"root": "."}, "preprocess": {"spacing": [4.0, 4.0, 4.0]},
                       "model": {"name": "unet", "spatial_dims": 2, "slice_axis": 2,
                                 "params": {"base_filters": 4, "depth": 2, "norm": "instance"}},
                       "train": {"patch_size": [16, 16]}, "infer": {"overlap": 0.25, "sw_batch_size": 3}})
    torch.manual_seed(1)
    net = build_model("unet", 2, 4, 4, base_filters=4, depth=2, norm="instance")
    ck = save_checkpoint(ModelContract(cfg, {"": Head(BRATS_CHANNELS, BRATS_LABELS)}, (0, 1), net.state_dict()),
                         tmp_path / "2d.pt")
    bundle = export_checkpoint(ck, "monai-bundle", tmp_path / "b")
    assert json.loads((bundle / "configs" / "inference.json").read_text())["inferer"]["_target_"] == "SliceInferer"
    _run_in_process(bundle, [SCAN], tmp_path / "out")
    infer(ck, [SCAN], tmp_path / "ref")
    agree = compare(tmp_path / "out" / "BRATS_007_seg.nii.gz", tmp_path / "ref" / "BRATS_007.nii.gz")
    assert agree >= 0.999, agree


def test_refusals_leave_nothing_on_disk(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    r = invoke("export", V1, "--format", "monai-bundle", "-o", busy)
    assert r.exit_code == 1 and "already exists and is not an empty folder" in r.output
    assert sorted(p.name for p in busy.iterdir()) == ["x.txt"]
    cfg = load_config({"data": {"root": "."}, "model": {"name": "unet", "spatial_dims": 2, "slice_axis": 2,
                                                         "context_slices": 1, "params": {"base_filters": 4, "depth": 2}},
                       "train": {"patch_size": [16, 16]}})
    net = build_model("unet", 2, 3, 2, base_filters=4, depth=2)
    ck = save_checkpoint(ModelContract(cfg, {"": Head(["T1"], {"background": 0, "object": 1})}, (0, 1),
                                       net.state_dict()), tmp_path / "25d.pt")
    with pytest.raises(MedsegError, match="2.5D model"):
        export_checkpoint(ck, "monai-bundle", tmp_path / "b25")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["25d.pt", "busy"]


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.pt"), ("monai-bundle", "bundle")])
def test_export_emits_no_warnings(tmp_path, fmt, name):
    ck = tiny_checkpoint(tmp_path / "tiny.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = export_checkpoint(ck, fmt, tmp_path / name)
    assert [str(w.message) for w in caught] == []
    ts = out if fmt == "torchscript" else out / "models" / "model.ts"
    m = torch.jit.load(str(ts))
    x = torch.randn(1, 1, 20, 24, 16)
    ref, _ = load_model(ck).build()
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x), atol=1e-5)


def test_the_metadata_describes_the_network(tmp_path):
    """MONAI's own check: a window of the metadata's input shape through ``network_def`` gives the metadata's
    output channels."""
    from monai.bundle import verify_net_in_out

    bundle = export_checkpoint(V1, "monai-bundle", tmp_path / "b")
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), device="cpu")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32, 32]
