"""Config validation: typos name the key and the closest valid key, wrong types name the expected type,
overrides apply, paths resolve against the config file, and the resolved config round-trips."""

from pathlib import Path

import pytest
import yaml

from medseg3d.config import apply_override, dump_config, load_config, parse_duration
from medseg3d.errors import MedsegError

BASE = {"data": {"root": "data"}}


def write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def error_of(raw: dict, tmp_path: Path, overrides=None) -> str:
    with pytest.raises(MedsegError) as e:
        load_config(write(tmp_path, raw), overrides)
    return str(e.value)


def test_unknown_key_names_key_and_closest(tmp_path):
    msg = error_of({**BASE, "train": {"bacth_size": 2}}, tmp_path)
    assert "unknown key 'train.bacth_size'" in msg
    assert "did you mean 'train.batch_size'" in msg
    assert str(tmp_path / "cfg.yaml") in msg


def test_unknown_top_level_section(tmp_path):
    msg = error_of({**BASE, "modle": {"name": "unet"}}, tmp_path)
    assert "unknown key 'modle'" in msg and "did you mean 'model'" in msg


def test_wrong_type_names_key_and_type(tmp_path):
    msg = error_of({**BASE, "train": {"batch_size": "two"}}, tmp_path)
    assert "'train.batch_size' must be an integer" in msg and "'two'" in msg
    msg = error_of({**BASE, "train": {"lr": "fast"}}, tmp_path)
    assert "'train.lr' must be a number" in msg


def test_unknown_model_and_loss_suggest(tmp_path):
    msg = error_of({**BASE, "model": {"name": "unte"}}, tmp_path)
    assert "unknown model 'unte'" in msg and "did you mean 'unet'" in msg
    msg = error_of({**BASE, "train": {"loss": "dice_c"}}, tmp_path)
    assert "unknown loss 'dice_c'" in msg and "did you mean" in msg


def test_missing_root_and_bad_values(tmp_path):
    assert "missing required key 'data.root'" in error_of({"data": {}}, tmp_path)
    assert "preprocess.orientation" in error_of({**BASE, "preprocess": {"orientation": "RAX"}}, tmp_path)
    assert "patch_size" in error_of({**BASE, "train": {"patch_size": [64, 64]}}, tmp_path)
    assert "train.budget" in error_of({**BASE, "train": {"budget": "ten minutes"}}, tmp_path)
    assert "positive duration" in error_of({**BASE, "train": {"budget": 0}}, tmp_path)


def test_budget_as_a_number_is_seconds(tmp_path):
    for given, seconds in ((90, 90.0), (1.5, 1.5), ("10m", 600.0), ("1h30m", 5400.0)):
        cfg = load_config({**BASE, "train": {"budget": given}})
        assert parse_duration(cfg.train.budget) == seconds


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.epochs=7", "train.patch_size=[32, 32, 16]",
                                              "model.params.base_filters=8", "train.amp=false"])
    assert cfg.train.epochs == 7
    assert cfg.train.patch_size == [32, 32, 16]
    assert cfg.model.params == {"base_filters": 8}
    assert cfg.train.amp is False


def test_override_typo_is_reported(tmp_path):
    msg = error_of(BASE, tmp_path, ["train.epoch=3"])
    assert "unknown key 'train.epoch'" in msg and "train.epochs" in msg
    with pytest.raises(MedsegError, match="key.sub=value"):
        apply_override({}, "train.epochs")


def test_paths_relative_to_config_file_and_overrides_to_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    p = sub / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"root": "../data"}}))
    assert load_config(p).data.root == str((tmp_path / "data").resolve())
    monkeypatch.chdir(tmp_path)
    assert load_config(p, ["data.root=elsewhere"]).data.root == str((tmp_path / "elsewhere").resolve())


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, {**BASE, "train": {"epochs": 3}}))
    again = load_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert again.train.augment.flip_prob == 0.5  # defaults are written out


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_every_shipped_config_validates():
    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    assert configs, "configs/ has no YAML file"
    for p in configs:
        cfg = load_config(p)
        for src in cfg.data.sources().values():  # data.root, or each of data.domains
            assert Path(src.root).is_dir(), f"{p}: data root {src.root} does not exist"


def test_readme_config_examples_validate():
    """Every YAML block in the README that looks like a config (or a part of one) uses only real keys."""
    import re

    from medseg3d.config import Config

    repo = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```yaml\n(.*?)```", (repo / "README.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        raw = yaml.safe_load(block)
        raw.setdefault("data", {})["root"] = str(repo / "data_samples")
        if raw.get("model", {}).get("spatial_dims") == 2:
            raw["model"].setdefault("name", "unet")
        Config.model_validate(raw)


def test_relabel_classes_must_be_labels(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    with pytest.raises(MedsegError, match=r"postprocess.relabel.target 'necrotic' is not one of data.labels "
                                          r"\(background, edema, non_enhancing, enhancing\)"):
        load_config(repo / "configs" / "brats_nnn.yaml", ["data.brats_labels=msd"])
    cfg = load_config(repo / "configs" / "brats_nnn.yaml", ["data.brats_labels=msd",
                                                            "postprocess.relabel.target=non_enhancing"])
    assert cfg.postprocess.relabel.target == "non_enhancing"
