"""The training engine: exact resume, learning-rate schedules, BraTS labels <-> regions, the BraTS folder
layout, patch-region augmentation, multi-domain isolation and the evaluate table."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import medseg3d.engine.trainer as trainer_mod
from medseg3d.cli import app
from medseg3d.config import load_config
from medseg3d.data.datasets import load_dataset
from medseg3d.data.labels import brats_labels, brats_regions, labels_to_regions, region_write_values, regions_to_labels
from medseg3d.data.synthetic import write_brats_folders
from medseg3d.bundle import build_network
from medseg3d.engine.trainer import Trainer, lr_factor

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples"


def tiny(tmp_path, *extra):
    return load_config(REPO / "configs" / "demo.yaml", [
        f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "train.budget=null",
        "preprocess.spacing=[6, 6, 6]", "train.patch_size=[32, 32, 32]", "model.params.base_filters=4",
        "infer.overlap=0", "train.tensorboard=false", *extra])


def test_resume_continues_at_the_right_step_with_identical_losses(tmp_path, monkeypatch):
    extra = ["train.epochs=2", "train.iters_per_epoch=2", "train.augment.rotate_prob=0.5",
             "train.augment.gamma_prob=0.5", "train.warmup_epochs=1", "train.scheduler=cosine"]
    full = Trainer(tiny(tmp_path, *extra), tmp_path / "full").fit()

    calls = {"n": 0}
    collate = trainer_mod.list_data_collate

    def crash_in_epoch_2(batch):  # a crash (as kill -9) in the middle of epoch 2: nothing of it is saved
        calls["n"] += 1
        if calls["n"] == 4:  # the second batch of epoch 2
            raise SystemExit("crash")
        return collate(batch)

    monkeypatch.setattr(trainer_mod, "list_data_collate", crash_in_epoch_2)
    with pytest.raises(SystemExit):
        Trainer(tiny(tmp_path, *extra), tmp_path / "cut").fit()
    monkeypatch.setattr(trainer_mod, "list_data_collate", collate)
    assert len(list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))) == 1
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["iteration"] == 2

    Trainer(tiny(tmp_path, *extra), resume=tmp_path / "cut").fit()
    a = list(csv.DictReader(open(full / "log.csv")))
    b = list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))
    assert [r["epoch"] for r in b] == ["1", "2"] and [r["iterations"] for r in b] == ["2", "4"]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss", "val_dice_mean", "lr"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-5, abs=1e-7), (ra["epoch"], k)


def test_resume_after_a_budget_stop_finishes_the_cut_epoch(tmp_path):
    """--budget stops mid-epoch; --resume continues that epoch where it stopped, so the run ends with the same
    iterations, losses and validation as an uninterrupted one."""
    extra = ["train.epochs=2", "train.iters_per_epoch=3", "train.augment.rotate_prob=0.5"]
    full = Trainer(tiny(tmp_path, *extra), tmp_path / "full").fit()
    cut = Trainer(tiny(tmp_path, *extra, "train.budget='0.000001'"), tmp_path / "cut").fit()  # one iteration
    ck = torch.load(cut / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["iteration"], len(ck["partial_losses"])) == (0, 1, 1)
    Trainer(tiny(tmp_path, *extra), resume=cut).fit()
    a = list(csv.DictReader(open(full / "log.csv")))
    b = list(csv.DictReader(open(cut / "log.csv")))
    assert [(r["epoch"], r["iterations"]) for r in b] == [("1", "3"), ("2", "6")]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss", "val_dice_mean", "lr"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-5, abs=1e-7), (ra["epoch"], k)


def test_resume_refuses_another_config(tmp_path):
    run = Trainer(tiny(tmp_path, "train.epochs=1", "train.iters_per_epoch=1"), tmp_path / "r").fit()
    from medseg3d.errors import MedsegError

    with pytest.raises(MedsegError, match="train.lr"):
        Trainer(tiny(tmp_path, "train.epochs=2", "train.iters_per_epoch=1", "train.lr=0.1"), resume=run)


def test_lr_schedule_warmup_then_poly():
    cfg = load_config({"data": {"root": "x"}, "train": {"epochs": 10, "iters_per_epoch": 10, "warmup_epochs": 1,
                                                        "scheduler": "poly", "poly_power": 1.0}})
    f = lr_factor(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    cfg = load_config({"data": {"root": "x"}, "train": {"iterations": 25, "iters_per_epoch": 10}})
    assert cfg.total_epochs == 3 and cfg.total_iterations == 25


@pytest.mark.parametrize("convention,values", [("2018", [0, 1, 2, 4]), ("2023", [0, 1, 2, 3]), ("msd", [0, 1, 2, 3])])
def test_brats_labels_regions_round_trip(convention, values):
    labels = brats_labels(convention)
    assert sorted(labels.values()) == values
    regions = brats_regions(convention)
    assert list(regions) == ["WT", "TC", "ET"]
    et = labels["enhancing"]
    assert regions["ET"] == [et] and set(regions["WT"]) == set(values) - {0}
    rng = np.random.default_rng(0)
    label = rng.choice(values, size=(7, 8, 9))
    masks = labels_to_regions(label, regions)
    assert masks.shape == (3, 7, 8, 9)
    np.testing.assert_array_equal(masks[0], label > 0)
    np.testing.assert_array_equal(regions_to_labels(masks, regions), label)
    np.testing.assert_array_equal(regions_to_labels(masks.astype(np.float32) * 0.9, regions), label)  # probs
    t = labels_to_regions(torch.as_tensor(label), regions)
    np.testing.assert_array_equal(t.numpy().astype(bool), masks)
    odd = torch.as_tensor(label).clone()
    odd[0, 0, :2] = torch.tensor([-1, 99])  # values outside every region (and outside the lookup table)
    t = labels_to_regions(odd, regions)
    np.testing.assert_array_equal(t.numpy().astype(bool), labels_to_regions(odd.numpy(), regions))
    assert not t[:, 0, 0, :2].any()
    if convention == "2018":
        assert region_write_values(regions) == {"WT": 2, "TC": 1, "ET": 4}


def test_config_brats_regions_and_errors():
    cfg = load_config({"data": {"root": "x", "brats_labels": 2023, "regions": "brats", "target": "regions"}})
    assert cfg.data.labels["enhancing"] == 3 and cfg.data.regions["TC"] == [1, 3]
    from medseg3d.errors import MedsegError

    with pytest.raises(MedsegError, match="data.regions is not set"):
        load_config({"data": {"root": "x", "target": "regions"}})
    with pytest.raises(MedsegError, match="needs data.brats_labels"):
        load_config({"data": {"root": "x", "regions": "brats"}})
    with pytest.raises(MedsegError, match="u2net3d"):
        load_config({"data": {"domains": {"a": {"root": "x"}}}, "model": {"name": "unet"}})


def test_brats_folder_layout_loads(tmp_path):
    write_brats_folders(tmp_path / "b", num_cases=2, shape=(16, 16, 16))
    info = load_dataset(tmp_path / "b")
    assert info.layout == "brats" and [c["id"] for c in info.training] == ["BraTS_001", "BraTS_002"]
    assert [Path(f).name for f in info.training[0]["image"]] == [
        "BraTS_001_t1.nii.gz", "BraTS_001_t1ce.nii.gz", "BraTS_001_t2.nii.gz", "BraTS_001_flair.nii.gz"]
    assert info.labels == {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}
    # the 2023 naming (CASE-t1n ... CASE-seg); one case without a segmentation is a test case
    d = tmp_path / "b23" / "BraTS-GLI-001"
    d.mkdir(parents=True)
    for old, new in zip(["t1", "t1ce", "t2", "flair", "seg"], ["t1n", "t1c", "t2w", "t2f", "seg"]):
        shutil.copy(tmp_path / "b" / "BraTS_001" / f"BraTS_001_{old}.nii.gz", d / f"BraTS-GLI-001-{new}.nii.gz")
    shutil.copytree(d, tmp_path / "b23" / "BraTS-GLI-002")
    for f in (tmp_path / "b23" / "BraTS-GLI-002").iterdir():
        f.rename(f.with_name(f.name.replace("001", "002")))
    (tmp_path / "b23" / "BraTS-GLI-002" / "BraTS-GLI-002-seg.nii.gz").unlink()
    info = load_dataset(tmp_path / "b23", labels=brats_labels("2023"))
    assert [c["id"] for c in info.training] == ["BraTS-GLI-001"] and [c["id"] for c in info.test] == ["BraTS-GLI-002"]
    assert info.labels["enhancing"] == 3


def test_spatial_augmentation_works_on_a_patch_sized_region():
    from monai.data import MetaTensor
    from monai import transforms as mt

    from medseg3d.data.transforms import RandSpatialToPatchd, augment_transforms

    cfg = load_config({"data": {"root": "x", "brats_labels": "2018", "regions": "brats", "target": "regions"},
                       "train": {"patch_size": [16, 16, 16], "augment": {
                           "rotate_prob": 1.0, "scale_prob": 1.0, "elastic_prob": 1.0, "gamma_prob": 1.0}}})
    ts = augment_transforms(cfg, cfg.data.regions)
    crop = next(t for t in ts if isinstance(t, mt.RandCropByPosNegLabeld))
    assert list(crop.cropper.spatial_size) == [20, 20, 20]  # 1.25 x the patch, not the volume
    spatial = next(t for t in ts if isinstance(t, RandSpatialToPatchd))
    assert spatial.patch == [16, 16, 16] and spatial.elastic.spatial_size == [16, 16, 16]
    aug = mt.Compose(ts)
    aug.set_random_state(0)
    lab = torch.zeros(1, 40, 40, 40)
    lab[0, 10:30, 10:30, 10:30] = 2
    lab[0, 15:25, 15:25, 15:25] = 4
    out = aug({"image": MetaTensor(torch.rand(4, 40, 40, 40) + 1), "label": MetaTensor(lab)})[0]
    assert out["image"].shape == (4, 16, 16, 16) and out["label"].shape == (3, 16, 16, 16)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}


def test_multidomain_step_leaves_other_domains_untouched():
    cfg = load_config(REPO / "configs" / "u2net_multidomain.yaml", [
        "model.params.base_filters=4", "model.params.levels=3", "train.weight_decay=0.1", "train.optimizer=adamw"])
    tr = Trainer.__new__(Trainer)
    tr.cfg = cfg
    model = build_network(cfg, {"brats": 4, "lesion": 2}, {"brats": 4, "lesion": 2})
    opt = tr._optimizer(model)
    x = {"brats": torch.randn(1, 4, 16, 16, 16), "lesion": torch.randn(1, 2, 16, 16, 16)}

    def step(domain):  # as the trainer steps
        opt.zero_grad(set_to_none=True)
        out = model(x[domain], domain=domain)
        out.square().mean().backward()
        opt.step()

    step("lesion")  # the other domain gets optimizer state (momentum) first
    step("brats")
    own = {id(p) for p in model.domain_parameters("lesion")}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in own}
    assert any(".depthwise.lesion" in n for n in before) and any("heads.lesion" in n for n in before)
    assert any("norm.lesion" in n for n in before)
    step("brats")
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"{n} changed by a step of the other domain"
    shared = model.shared_parameters()[0].detach().clone()
    step("brats")
    assert not torch.equal(shared, model.shared_parameters()[0])  # shared weights do learn


def test_evaluate_identical_folders(tmp_path):
    r = CliRunner().invoke(app, ["evaluate", str(SAMPLES / "labelsTs"), str(SAMPLES / "labelsTs"),
                                 "--labels", "necrotic=1,edema=2,enhancing=4", "-o", str(tmp_path / "t.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    mean = rows[-3]
    assert mean["case"] == "mean" and float(mean["dice_edema"]) == 1.0 and float(mean["hd95_edema"]) == 0.0


def test_region_training_learns(tmp_path):
    """Sigmoid WT/TC/ET training (data.target: regions): the loss falls and whole tumour is found."""
    cfg = tiny(tmp_path, "data.brats_labels=2018", "data.regions=brats", "data.target=regions", "train.epochs=4", "train.iters_per_epoch=10",
               "train.loss=dice_ce", "train.lr=0.003", "train.scheduler=none", "train.augment.flip_prob=0", "train.fg_oversample=0.9")
    run = Trainer(cfg, tmp_path / "r").fit()
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert {"val_dice_WT", "val_dice_TC", "val_dice_ET"} <= set(rows[0])
    assert float(rows[-1]["train_loss"]) < 0.95 * float(rows[0]["train_loss"])
    assert float(rows[-1]["val_dice_WT"]) > 0.5


def test_region_losses_are_per_region_binary():
    """Overlapping region masks predicted confidently give a near-zero loss (a softmax cross-entropy over the
    region channels would not: WT, TC and ET overlap)."""
    from medseg3d.engine.losses import build_loss

    lab = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    lab[0, 2:6, 2:6, 2:6], lab[0, 3:5, 3:5, 3:5] = 2, 1
    lab[0, 4, 4, 4] = 4
    masks = labels_to_regions(lab[0], brats_regions("2018"))[None]
    assert masks.shape == (1, 3, 8, 8, 8) and (masks.sum(1) > 1).any()
    logits = masks * 20 - 10
    for name in ("dice_ce", "ce"):
        assert build_loss(name, multilabel=True)(logits, masks).item() < 1e-2, name
    wrong = build_loss("ce", multilabel=True)(-logits, masks).item()
    assert wrong == pytest.approx(10, rel=1e-3)  # BCE of a confident wrong voxel is 10 nats


def test_training_on_a_bad_case_file_is_one_sentence_naming_it(tmp_path):
    """A label with a value outside the convention (BraTS 2023's 3 under 2018) or on another grid stops
    training with one line naming the file, exit 1, and no checkpoint."""
    import nibabel as nib

    root = tmp_path / "b"
    write_brats_folders(root, num_cases=3, shape=(16, 16, 16))
    seg = root / "BraTS_002" / "BraTS_002_seg.nii.gz"
    img = nib.load(seg)
    data = np.asarray(img.dataobj).copy()
    data[data == 4] = 3
    nib.save(nib.Nifti1Image(data, img.affine, img.header), seg)
    base = ["train", str(REPO / "configs" / "brats_nnn.yaml"), "--set", f"data.root={root}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.iterations=1",
            "--set", "train.patch_size=[16,16,16]", "--set", "model.params.base_filters=4",
            "--set", "train.tensorboard=false", "--set", "data.fold=all"]
    r = CliRunner().invoke(app, [*base, "--run-dir", str(tmp_path / "run1")])
    assert r.exit_code == 1
    assert f"error: {seg}: label value(s) [3] are not among the config's labels [0, 1, 2, 4]" in r.output
    assert not list((tmp_path / "run1").glob("*.pt"))

    nib.save(nib.Nifti1Image(data[:8], img.affine, img.header), seg)  # another grid
    r = CliRunner().invoke(app, [*base, "--run-dir", str(tmp_path / "run2")])
    assert r.exit_code == 1 and f"error: {seg}: label shape" in r.output and "Traceback" not in r.output
    assert not list((tmp_path / "run2").glob("*.pt"))


def test_progress_plot_draws_every_class_also_at_zero():
    import matplotlib.pyplot as plt

    from medseg3d.engine.plots import progress_figure

    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_dice_mean": 0.3 * e / 3,
             "val_dice_WT": 0.9 * e / 3, "val_dice_TC": 0.0, "val_dice_ET": float("nan") if e < 3 else 0.0,
             "lr": 0.01} for e in (1, 2, 3)]
    strings = [{k: str(v) for k, v in r.items()} for r in rows]  # as read back from log.csv
    for history in (rows, strings):
        fig = progress_figure(history)
        dice_ax = fig.axes[1]
        lines = {ln.get_label(): ln.get_ydata() for ln in dice_ax.get_lines()}
        assert list(lines) == ["mean", "WT", "TC", "ET"]
        assert list(lines["TC"]) == [0.0, 0.0, 0.0] and np.isnan(lines["ET"][0]) and lines["ET"][2] == 0.0
        assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["train loss", "validation loss"]
        plt.close(fig)


def test_resume_with_a_longer_schedule_keeps_learning(tmp_path):
    """Resuming with more iterations stretches the schedule (the saved scheduler state holds the old length)."""
    run = Trainer(tiny(tmp_path, "train.iterations=2", "train.iters_per_epoch=2", "train.scheduler=poly"),
                  tmp_path / "r").fit()
    Trainer(tiny(tmp_path, "train.iterations=6", "train.iters_per_epoch=2", "train.scheduler=poly"),
            resume=run).fit()
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["iterations"]) for r in rows] == [2, 4, 6]
    assert float(rows[1]["lr"]) > 0  # after iteration 4 of 6, not past the end of the old 2-step schedule
    with pytest.raises(Exception, match="already at iteration 6, beyond the 2"):
        Trainer(tiny(tmp_path, "train.iterations=2", "train.iters_per_epoch=2"), resume=run).fit()
