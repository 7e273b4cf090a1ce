"""Where the engine's regions and domains meet inference products: a region-trained (sigmoid WT/TC/ET) model
through TTA, --save-probs, uncertainty and ONNX export; a multi-domain model per domain through the CLI and
ONNX; a 2D run resumed (its slice settings are resolved when it starts)."""

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg3d.cli import app
from medseg3d.config import load_config
from medseg3d.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples"
TEST_SCANS = sorted((SAMPLES / "imagesTs").glob("*.nii.gz"))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(config: str, tmp: Path, *extra: str):
    return load_config(REPO / "configs" / config, [
        f"output_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}", "train.budget=null",
        "preprocess.spacing=[6, 6, 6]", "infer.overlap=0", "train.tensorboard=false", *extra])


@pytest.fixture(scope="module")
def region_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regions")
    cfg = small("brats_nnn.yaml", tmp, "data.target=regions", "train.iterations=3", "train.iters_per_epoch=3",
                "train.patch_size=[32, 32, 32]", "model.params.base_filters=4", "model.params.depth=3")
    return Trainer(cfg, tmp / "run").fit()


def test_region_model_writes_brats_labels_region_probabilities_and_entropy(region_run, tmp_path):
    ck = torch.load(region_run / "best.pt", weights_only=True)
    assert ck["regions"] == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["infer", str(TEST_SCANS[0]), "-m", str(region_run), "-o", str(out), "--tta",
                                 "--save-probs", "--save-uncertainty", "entropy", "--no-preview"])
    assert r.exit_code == 0, r.output
    case = TEST_SCANS[0].name[:-7]
    labels = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    npz = np.load(out / f"{case}_probs.npz")
    assert list(npz["region_names"]) == ["WT", "TC", "ET"]
    assert list(npz["region_labels"]) == ["1+2+4", "1+4", "4"]
    probs = npz["probabilities"].astype(np.float32)
    assert probs.shape == (3, *labels.shape) and probs.min() >= 0 and probs.max() <= 1
    # the labels are the regions thresholded and painted in order (ET -> 4, TC - ET -> 1, WT - TC -> 2)
    wt, tc, et = probs > 0.5
    expect = np.where(et, 4, np.where(tc, 1, np.where(wt, 2, 0)))
    clear = (np.abs(probs - 0.5) > 2e-3).all(0)  # float16 rounding near 0.5 may flip a voxel
    assert clear.mean() > 0.5 and (expect == labels)[clear].all()
    # summed binary entropy of three regions: 0 where every region is certain, at most 3 ln 2
    ent = np.asarray(nib.load(out / f"{case}_uncertainty.nii.gz").dataobj)
    assert ent.min() >= 0 and ent.max() <= 3 * np.log(2) + 1e-4
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    ref = -(p * np.log(p) + (1 - p) * np.log(1 - p)).sum(0)
    assert np.allclose(ent, ref, atol=5e-3)


def test_region_model_onnx_export_gives_the_same_labels(region_run, tmp_path):
    runner = CliRunner()
    onnx_path = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", str(region_run), "--format", "onnx", "-o", str(onnx_path)])
    assert r.exit_code == 0, r.output
    for name, model in (("pt", region_run), ("onnx", onnx_path)):
        r = runner.invoke(app, ["infer", str(TEST_SCANS[1]), "-m", str(model), "-o", str(tmp_path / name),
                                "--no-preview", "--no-report"])
        assert r.exit_code == 0, r.output
    case = TEST_SCANS[1].name
    a = np.asarray(nib.load(tmp_path / "pt" / case).dataobj)
    b = np.asarray(nib.load(tmp_path / "onnx" / case).dataobj)
    assert (a == b).mean() > 0.999


@pytest.fixture(scope="module")
def domain_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("domains")
    cfg = small("u2net_multidomain.yaml", tmp, "train.iterations=2", "train.iters_per_epoch=2",
                "train.batch_size=1", "train.patch_size=[32, 32, 32]", "model.params.base_filters=4",
                "model.params.levels=3")
    return Trainer(cfg, tmp / "run").fit()


def test_multidomain_infer_and_export_per_domain(domain_run, tmp_path):
    runner = CliRunner()
    lesion = sorted((SAMPLES / "domain_b" / "imagesTs").glob("*.nii.gz"))
    r = runner.invoke(app, ["infer", *map(str, lesion), "-m", str(domain_run), "--domain", "lesion",
                            "-o", str(tmp_path / "pt"), "--no-preview"])
    assert r.exit_code == 0, r.output
    pred = np.asarray(nib.load(tmp_path / "pt" / "LESION_005.nii.gz").dataobj)
    assert pred.shape == nib.load(lesion[0]).shape and set(np.unique(pred).tolist()) <= {0, 1}

    # the BraTS domain (the default) wants four channels: two files are refused with the file named
    r = runner.invoke(app, ["infer", *map(str, lesion), "-m", str(domain_run), "-o", str(tmp_path / "x")])
    assert r.exit_code == 1 and "error:" in r.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    r = runner.invoke(app, ["infer", *map(str, lesion), "-m", str(domain_run), "--domain", "liver",
                            "-o", str(tmp_path / "y")])
    assert r.exit_code == 1 and "unknown domain 'liver'" in r.output

    onnx_path = tmp_path / "lesion.onnx"
    r = runner.invoke(app, ["export", str(domain_run), "--domain", "lesion", "-o", str(onnx_path)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["infer", *map(str, lesion), "-m", str(onnx_path), "-o", str(tmp_path / "onnx"),
                            "--no-preview"])
    assert r.exit_code == 0, r.output
    same = np.asarray(nib.load(tmp_path / "onnx" / "LESION_005.nii.gz").dataobj)
    assert (same == pred).mean() > 0.999
    r = runner.invoke(app, ["infer", *map(str, lesion), "-m", str(onnx_path), "--domain", "brats",
                            "-o", str(tmp_path / "z")])
    assert r.exit_code == 1 and "exported for domain 'lesion'" in r.output


def test_2d_run_resumes_with_auto_slice_axis(tmp_path):
    extra = ["train.iters_per_epoch=1", "train.patch_size=[32, 32]", "model.params.base_filters=4",
             "model.params.depth=2", "model.context_slices=1"]
    run = Trainer(small("slices2d_unet.yaml", tmp_path, "train.epochs=1", *extra), tmp_path / "r").fit()
    ck = torch.load(run / "last.pt", weights_only=True)
    assert isinstance(ck["config"]["model"]["slice_axis"], int)  # resolved from 'auto' when the run started
    Trainer(small("slices2d_unet.yaml", tmp_path, "train.epochs=2", *extra), resume=run).fit()
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 2
