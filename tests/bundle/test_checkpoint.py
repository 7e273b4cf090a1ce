"""Checkpoints are written atomically, loaded with weights_only, and a bad file gets a clear message."""

import torch
import pytest

from medseg3d.bundle import Head, ModelContract, load_checkpoint, resolve_checkpoint, save_checkpoint
from medseg3d.config import load_config
from medseg3d.errors import MedsegError


def state(epoch: int = 3) -> ModelContract:
    return ModelContract(load_config({"data": {"root": "."}}), {"": Head(["T1"], {"background": 0, "tumour": 1})},
                         (0, 1, 2), {"w": torch.ones(2)}, extra={"epoch": epoch})


def test_round_trip_and_run_folder(tmp_path):
    save_checkpoint(state(), tmp_path / "last.pt")
    ck = load_checkpoint(tmp_path)  # a run folder resolves to best.pt, else last.pt
    assert ck["epoch"] == 3 and torch.equal(ck["model"]["w"], torch.ones(2))
    save_checkpoint(state(5), tmp_path / "best.pt")
    assert resolve_checkpoint(tmp_path).name == "best.pt"
    assert load_checkpoint(tmp_path)["epoch"] == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(state(), path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(state(99), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_bad_checkpoints_are_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MedsegError, match="junk.pt: not a readable medseg3d checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(MedsegError, match="other.pt: not a medseg3d checkpoint"):
        load_checkpoint(other)
    with pytest.raises(MedsegError, match="no best.pt or last.pt"):
        load_checkpoint(tmp_path)
    with pytest.raises(MedsegError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"format": "medseg3d-checkpoint", "model": Evil()}, p)
    with pytest.raises(MedsegError, match="not a readable"):
        load_checkpoint(p)
