"""End to end through the command line: train on data_samples for a few iterations, then infer on a scan
that was not trained on; and every bad input ends with one clear line, exit code 1 and no output."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg3d.cli import app

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    r = invoke("train", REPO / "configs" / "demo.yaml", "--set", f"output_dir={tmp / 'runs'}",
               "--set", f"data.cache_dir={tmp / 'cache'}", "--set", "train.epochs=3",
               "--set", "train.iters_per_epoch=4", "--set", "train.budget=null",
               "--set", "preprocess.spacing=[6, 6, 6]", "--set", "train.patch_size=[32, 32, 32]",
               "--set", "model.params.base_filters=4")
    assert r.exit_code == 0, r.output
    runs = list((tmp / "runs").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_train_writes_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "splits.json", "log.csv", "last.pt", "best.pt"} <= names
    rows = list(csv.DictReader(open(trained_run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # the loss falls
    assert all(0 <= float(r["val_dice_mean"]) <= 1 for r in rows)
    ck = torch.load(trained_run / "last.pt", weights_only=True)
    assert ck["epoch"] == 3 and ck["channels"] == ["T1", "T1ce", "T2", "FLAIR"]
    assert ck["labels"] == {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}
    assert ck["config"]["train"]["epochs"] == 3  # the resolved config, overrides included
    splits = json.loads((trained_run / "splits.json").read_text())
    assert len(splits) == ck["config"]["data"]["num_folds"]
    assert sorted(i for s in splits for i in s["val"]) == [f"BRATS_00{i}" for i in range(1, 7)]


def test_infer_writes_label_map_in_scan_geometry(trained_run, tmp_path):
    meta = json.loads((SAMPLES / "dataset.json").read_text())
    scan = SAMPLES / meta["test"][0]
    out = tmp_path / "pred"
    r = invoke("infer", scan, "-m", trained_run, "-o", out)
    assert r.exit_code == 0, r.output
    name = scan.name.removesuffix(".nii.gz")
    pred, src = nib.load(out / f"{name}.nii.gz"), nib.load(scan)
    assert pred.shape == src.shape[:3]
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
    assert pred.header.get_sform(coded=True)[1] == src.header.get_sform(coded=True)[1]
    assert pred.header.get_qform(coded=True)[1] == src.header.get_qform(coded=True)[1]
    assert np.issubdtype(pred.get_data_dtype(), np.integer)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}
    assert (out / f"{name}.png").stat().st_size > 1000


def test_infer_errors_are_one_line_and_leave_nothing(trained_run, tmp_path):
    out = tmp_path / "out"
    r = invoke("infer", tmp_path / "missing.nii.gz", "-m", trained_run, "-o", out)
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"error: {tmp_path / 'missing.nii.gz'}: file not found"]
    assert not out.exists() or not any(out.iterdir())

    three_d = tmp_path / "t1_only.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), three_d)
    r = invoke("infer", three_d, "-m", trained_run, "-o", out)
    assert r.exit_code == 1 and "t1_only.nii.gz: has 1 channel(s) but the model expects 4" in r.output
    assert not out.exists() or not any(out.iterdir())

    r = invoke("infer", three_d, "-m", tmp_path / "nope.pt", "-o", out)
    assert r.exit_code == 1 and "nope.pt: checkpoint not found" in r.output


def test_infer_never_overwrites_an_input(trained_run, tmp_path):
    scan = tmp_path / "case.nii.gz"
    src = SAMPLES / json.loads((SAMPLES / "dataset.json").read_text())["test"][0]
    scan.write_bytes(src.read_bytes())
    before = scan.read_bytes()
    r = invoke("infer", scan, "-m", trained_run, "-o", tmp_path)
    assert r.exit_code == 1 and "would overwrite an input" in r.output
    assert scan.read_bytes() == before


def test_train_config_typo_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {root: .}\ntrain: {epocs: 3}\n")
    r = invoke("train", cfg)
    assert r.exit_code == 1
    assert "unknown key 'train.epocs' (did you mean 'train.epochs'?)" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_models_command_lists_every_registered_net():
    from medseg3d.registry import MODELS

    r = invoke("models")
    assert r.exit_code == 0, r.output
    for name in MODELS.names():
        assert f"| {name} " in r.output
