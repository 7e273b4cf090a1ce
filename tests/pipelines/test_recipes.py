"""Every config validates; every recipe (pipelines/<recipe>.py, one per seed system) trains two iterations on
data_samples, writes its run folder and segments a held-out scan with dataset label values; the CLI trains
brats_nnn, infers BraTS labels and evaluates them."""

import csv
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg3d.cli import app
from medseg3d.config import load_config
from medseg3d.bundle import model_params

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
RECIPES = ["brats_nnn", "brats_aereg", "vnet", "unet3d", "unetpp3d", "multiresunet3d", "u2net_multidomain"]
TINY = ["--set", "preprocess.spacing=[6, 6, 6]", "--set", "infer.overlap=0", "--set", "train.tensorboard=true"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    for src in cfg.data.sources().values():
        assert Path(src.root).is_dir()
    params = model_params(cfg)
    if cfg.model.name == "segresnet_vae":  # the VAE's size comes from the patch
        assert params["input_image_size"] == cfg.train.patch_size
    # a user's data is one override away
    assert load_config(path, ["data.root=/data/BraTS2021"] if not cfg.data.domains else
                       ["data.domains.brats.root=/data/Task01"]) is not None


def test_paper_settings():
    nnn = load_config(REPO / "configs" / "brats_nnn.yaml")
    assert nnn.train.patch_size == [128, 128, 128] and nnn.train.batch_size == 2
    assert nnn.model.params["base_filters"] == 30 and nnn.train.weight_decay == 1e-5
    # region-based, as the paper: sigmoid WT/TC/ET with Dice + BCE
    assert nnn.data.regions == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]} and nnn.data.target == "regions"
    assert nnn.postprocess.relabel.model_dump() == {"source": "enhancing", "target": "necrotic", "below_ml": 0.5}
    a = nnn.train.augment
    assert min(a.rotate_prob, a.scale_prob, a.elastic_prob, a.gamma_prob, a.flip_prob) > 0
    ae = load_config(REPO / "configs" / "brats_aereg.yaml")
    assert ae.train.patch_size == [160, 192, 128] and ae.data.target == "regions" and ae.train.loss == "ae_reg"
    assert ae.train.lr == 1e-4 and ae.train.scheduler == "poly" and ae.train.poly_power == 0.9
    assert load_config(REPO / "configs" / "vnet.yaml").train.patch_size == [128, 128, 64]


def _run_recipe(name, tmp_path, cache):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "pipelines" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    patch = "64" if name == "u2net_multidomain" else "32"  # (the authors' 6 levels need 64 to keep 2 voxels deep down)
    return mod.main(["--iterations", "2", "--patch", patch, "--filters", "8" if name == "brats_aereg" else "4", "--out", str(tmp_path),
                     "--set", f"data.cache_dir={cache}", *TINY])


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_two_iterations_and_segments(name, tmp_path, cache):
    res = _run_recipe(name, tmp_path, cache)
    run = Path(res["run_dir"])
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "splits.json", "log.csv", "progress.png", "last.pt", "best.pt",
            "validation_metrics.csv", "tensorboard"} <= names
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["iterations"]) for r in rows] == [2]
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["iteration"] == 2
    preds = [res["prediction"]] if "prediction" in res else [res[d]["prediction"] for d in ("brats", "lesion")]
    allowed = [{0, 1, 2, 4}, {0, 1}]
    for pred, ok in zip(preds, allowed):
        values = set(np.unique(np.asarray(nib.load(pred).dataobj)).tolist())
        assert values <= ok, values
    if name == "unetpp3d":  # segmented by the full net and each pruned sub-network, each to its own file
        assert list(res["pruned"]) == ["L4", "L3", "L2", "L1"]
        assert len({str(r["prediction"]) for r in res["pruned"].values()}) == 4


def test_cli_trains_brats_nnn_infers_brats_labels_and_evaluates(tmp_path, cache):
    runner = CliRunner()
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(REPO / "configs" / "brats_nnn.yaml"), "--run-dir", str(run),
                            "--set", f"data.cache_dir={cache}", "--set", "train.iterations=2",
                            "--set", "train.patch_size=[32,32,32]", "--set", "model.params.base_filters=4",
                            "--set", "train.tensorboard=false", "--budget", "5m", *TINY[:4]])
    assert r.exit_code == 0, r.output
    assert (run / "progress.png").stat().st_size > 1000
    header = next(csv.reader(open(run / "log.csv")))
    assert {"val_dice_WT", "val_dice_TC", "val_dice_ET", "val_loss", "lr"} <= set(header)
    table = list(csv.DictReader(open(run / "validation_metrics.csv")))
    assert [r["case"] for r in table][-3:] == ["mean", "std", "n"] and "hd95_ET" in table[0]

    scans = sorted((REPO / "data_samples" / "imagesTs").glob("*.nii.gz"))
    out = tmp_path / "pred"
    r = runner.invoke(app, ["infer", *map(str, scans), "-m", str(run), "-o", str(out), "--no-preview"])
    assert r.exit_code == 0, r.output
    for s in scans:
        assert set(np.unique(np.asarray(nib.load(out / s.name).dataobj)).tolist()) <= {0, 1, 2, 4}
    r = runner.invoke(app, ["evaluate", str(out), str(REPO / "data_samples" / "labelsTs"), "--regions", "brats",
                            "-o", str(tmp_path / "table.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert [r["case"] for r in rows] == ["BRATS_007", "BRATS_008", "mean", "std", "n"]
    assert {"dice_WT", "dice_TC", "dice_ET", "hd95_WT"} <= set(rows[0])


def test_slices2d_recipe_trains_two_iterations_and_segments_every_test_scan(tmp_path, cache):
    spec = importlib.util.spec_from_file_location("recipe_slices2d", REPO / "pipelines" / "slices2d.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--context-slices", "1", "--out", str(tmp_path), "--set", "train.iterations=2",
                    "--set", "train.patch_size=[32, 32]", "--set", "model.params.base_filters=4",
                    "--set", f"data.cache_dir={cache}", *TINY[:4]])
    ck = torch.load(Path(res["run_dir"]) / "last.pt", weights_only=True)
    assert ck["iteration"] == 2 and ck["config"]["model"]["spatial_dims"] == 2
    tests = sorted((REPO / "data_samples" / "imagesTs").glob("*.nii.gz"))
    assert [Path(p).name for p in res["predictions"]] == [f"{p.name[:-7]}_seg.nii.gz" for p in tests]
    for pred, scan in zip(res["predictions"], tests):
        img, ref = nib.load(pred), nib.load(scan)
        assert img.shape == ref.shape[:3] and np.allclose(img.affine, ref.affine)
        assert set(np.unique(np.asarray(img.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert set(res["dice"]) == {p.name[:-7] for p in tests}
