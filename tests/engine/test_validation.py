"""The final validation segments each validation case as `medseg3d infer` does and scores it in the case's own
geometry: validation_metrics.csv is what `medseg3d evaluate` writes for the same predictions."""

import csv
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseg3d.cli import app
from medseg3d.config import load_config
from medseg3d.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def _table(path):
    with open(path) as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_validation_metrics_equal_evaluate_on_the_same_predictions(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "train.budget=null",
        "preprocess.spacing=[5, 5, 5]", "train.patch_size=[32, 32, 32]", "model.params.base_filters=4",
        "train.iterations=6", "train.iters_per_epoch=3", "train.tensorboard=false", "data.num_folds=3",
        "postprocess.largest_component=true"])
    run = Trainer(cfg, tmp_path / "run").fit()
    preds = sorted((run / "validation").glob("*.nii.gz"))
    assert len(preds) == 2  # fold 0 of 3 over 6 cases
    for p in preds:  # each in its own scan's geometry
        img, ref = nib.load(p), nib.load(REPO / "data_samples" / "imagesTr" / p.name)
        assert img.shape == ref.shape[:3] and np.allclose(img.affine, ref.affine)
    ours = _table(run / "validation_metrics.csv")

    gt = tmp_path / "gt"
    gt.mkdir()
    for p in preds:
        shutil.copy(REPO / "data_samples" / "labelsTr" / p.name, gt / p.name)
    shutil.copy(REPO / "data_samples" / "dataset.json", gt.parent / "dataset.json")  # label names, as beside labelsTr
    r = CliRunner().invoke(app, ["evaluate", str(run / "validation"), str(gt), "-o", str(tmp_path / "eval.csv")])
    assert r.exit_code == 0, r.output
    theirs = _table(tmp_path / "eval.csv")
    assert set(ours) == set(theirs) and list(next(iter(ours.values()))) == list(next(iter(theirs.values())))
    for case, row in ours.items():
        for k, v in row.items():
            if k == "case":
                continue
            a, b = float(v), float(theirs[case][k])
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-5), (case, k)
    assert "dice_edema" in theirs["mean"]  # columns named after the dataset's labels
