"""The model contract read back from every file medseg3d writes: a version-1 checkpoint still segments as it
did, exported TorchScript and ONNX files segment through `medseg3d infer`, and damaged or hostile files are
one clear line with nothing run."""

import json
import pickle
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from medseg3d.bundle import load_model
from medseg3d.cli import app
from medseg3d.errors import MedsegError
from medseg3d.inference.segmenter import Segmenter

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "tests" / "fixtures" / "checkpoint_v1.pt"
SCAN = REPO / "data_samples" / "imagesTs" / "BRATS_007.nii.gz"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_version_1_checkpoint_still_segments_as_it_did():
    contract = load_model(V1)
    assert contract.version == 1 and contract.mirror_axes == (0, 1, 2)
    labels = np.asarray(Segmenter.from_checkpoint(V1, device="cpu").predict(SCAN).dataobj)
    expected = np.load(REPO / "tests" / "fixtures" / "checkpoint_v1_BRATS_007.npz")["labels"]
    assert labels.shape == expected.shape and (labels == expected).mean() > 0.999


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.pt"), ("onnx", "model.onnx")])
def test_an_exported_file_segments_through_infer_like_its_checkpoint(tmp_path, fmt, name):
    r = invoke("export", V1, "--format", fmt, "-o", tmp_path / name)
    assert r.exit_code == 0, r.output
    assert "Warning" not in r.output and "train=True" not in r.output
    r = invoke("infer", SCAN, "-m", tmp_path / name, "-o", tmp_path / "out", "--no-preview")
    assert r.exit_code == 0, r.output
    r = invoke("infer", SCAN, "-m", V1, "-o", tmp_path / "ref", "--no-preview")
    assert r.exit_code == 0, r.output
    got = np.asarray(nib.load(tmp_path / "out" / "BRATS_007.nii.gz").dataobj)
    ref = np.asarray(nib.load(tmp_path / "ref" / "BRATS_007.nii.gz").dataobj)
    assert (got == ref).mean() > 0.999
    report = json.loads((tmp_path / "out" / "BRATS_007.json").read_text())
    assert report["model"]["checkpoints"] == [str(tmp_path / name)]


def test_damaged_weights_are_refused_by_their_checksum(tmp_path):
    good = tmp_path / "good.pt"
    contract = load_model(V1)  # written again in the current format, with the checksum
    from medseg3d.bundle import save_checkpoint

    save_checkpoint(contract, good)
    ck = torch.load(good, weights_only=True)
    key = next(iter(ck["model"]))
    ck["model"][key] = ck["model"][key] + 1e-3
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    with pytest.raises(MedsegError, match="bad.pt: its weights do not match the checksum"):
        load_model(bad)
    assert load_model(good).weights is not None


def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    evil = tmp_path / "evil.pt"
    ck = torch.load(V1, weights_only=True)
    ck["extra"] = Payload()  # hidden inside a real checkpoint
    torch.save(ck, evil)
    legacy = tmp_path / "legacy.pt"
    with open(legacy, "wb") as f:
        pickle.dump({"format": "medseg3d-checkpoint", "model": Payload()}, f)
    for path in (evil, legacy):
        with pytest.raises(MedsegError) as e:
            Segmenter.from_checkpoint(path)
        assert "weights_only" not in str(e.value) and "nothing was run" in str(e.value)
        r = invoke("infer", SCAN, "-m", path, "-o", tmp_path / "o")
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert not marker.exists()


def _with_meta(src: Path, dst: Path, meta):
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    if meta is not None:
        onnx.helper.set_model_props(proto, {"medseg3d": meta})
    onnx.save(proto, str(dst))


@pytest.mark.parametrize("meta, message", [
    (None, "has no medseg3d metadata"),
    ("{not json", "metadata is not valid JSON"),
    ("[1, 2]", "metadata is not a mapping"),
    (json.dumps({"config": {"data": {"root": "."}}, "channels": ["T1"]}), "lacks 'labels'"),
    (json.dumps({"config": {"data": {"root": "."}}, "channels": "T1", "labels": {"a": 0}}), "malformed head"),
    (json.dumps({"config": {"data": {"root": "."}, "model": {"name": "nope"}}, "channels": ["a"],
                 "labels": {"b": 0}}), "unknown model 'nope'"),
])
def test_malformed_onnx_metadata_is_one_line(tmp_path, meta, message):
    r = invoke("export", V1, "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    _with_meta(tmp_path / "m.onnx", tmp_path / "x.onnx", meta)
    r = invoke("infer", SCAN, "-m", tmp_path / "x.onnx", "-o", tmp_path / "o")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert message in r.output and "x.onnx" in r.output
    assert not (tmp_path / "o").exists()


def test_onnx_metadata_naming_fewer_labels_than_outputs_is_refused(tmp_path):
    r = invoke("export", V1, "--format", "onnx", "-o", tmp_path / "m.onnx")
    meta = json.loads(onnx.load(str(tmp_path / "m.onnx")).metadata_props[0].value)
    meta["labels"] = {"background": 0, "edema": 2}
    _with_meta(tmp_path / "m.onnx", tmp_path / "few.onnx", json.dumps(meta))
    r = invoke("infer", SCAN, "-m", tmp_path / "few.onnx", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "the network has 4 outputs but its metadata names 2 labels" in r.output
    assert not (tmp_path / "o").exists()


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    data = V1.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    r = invoke("infer", SCAN, "-m", cut, "-o", tmp_path / "o")
    assert r.exit_code == 1 and "cut.pt: not a readable medseg3d checkpoint" in r.output
    assert "is the file complete" in r.output
