"""Bad inputs, one row each, through the command line and, where it applies, the Python API.

Every refused input gives exactly one line of output starting with ``error: `` that names the file (or the
config key, or the flag) and what is wrong (and, where the message gives it, what to do), no traceback, a
non-zero exit code, and leaves the disk as it was: the folder holding the row's inputs and outputs is compared
file by file (names, sizes, contents, modification times) before and after, so a partial output, a stray
temporary file, an empty folder made for outputs, or an earlier good output overwritten or deleted all fail the
row. Rows that pre-create a good output (``good_output``) prove a failed run leaves it alone. The same input
through the Python API raises :class:`medseg3d.MedsegError` with the same sentence.

Inputs handled rather than refused have their own tests below the table: a DICOM series with blank
Study/Series UIDs (repaired with one warning), a batch with one damaged case (the others written, exit code 1),
a patch larger than every image (padded, with one warning) and a diverging training loss (stopped, the last
checkpoint kept and named). ``--debug`` is the one way to get a traceback (a subprocess, the real exit code).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from helpers import make_affine, phantom, tiny_checkpoint
from typer.testing import CliRunner

import medseg3d
from medseg3d.bundle import Head, ModelContract, save_checkpoint
from medseg3d.cli import app
from medseg3d.config import load_config
from medseg3d.errors import MedsegError
from medseg3d.models import build_model

REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 16, 16)
SPACING = (2.0, 2.0, 2.0)
AFFINE = make_affine("LAS", SPACING)
runner = CliRunner()


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Model files shared by the rows (outside every row's compared folder)."""
    d = tmp_path_factory.mktemp("models")
    out = {"t1": tiny_checkpoint(d / "t1.pt", spacing=SPACING),
           "t1t2": tiny_checkpoint(d / "t1t2.pt", channels=("T1", "T2"), spacing=SPACING)}
    # a checkpoint whose config asks for 8 base filters but whose weights are those of 4
    cfg = load_config({"data": {"root": "."}, "preprocess": {"spacing": list(SPACING)},
                       "model": {"name": "unet", "params": {"base_filters": 8, "depth": 2, "norm": "instance"}},
                       "train": {"patch_size": [16, 16, 16]}})
    small = build_model("unet", 3, 1, 2, base_filters=4, depth=2, norm="instance")
    out["misfit"] = save_checkpoint(ModelContract(cfg, {"": Head(["T1"], {"background": 0, "object": 3})}, (0, 1, 2),
                                                  small.state_dict()), d / "misfit.pt")
    data = out["t1"].read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    out["truncated"] = d / "truncated.pt"
    out["pickle"] = _hostile_pickle(d / "hostile.pt", d / "PWNED")
    out["onnx_text"] = _onnx_with_meta(d / "text.onnx", "{'labels': not json")
    meta = {"format": "medseg3d-checkpoint", "version": 3, "config": cfg.model_dump(mode="json"),
            "channels": ["T1"], "labels": ["background", "object"], "mirror_axes": [0, 1, 2]}
    out["onnx_labels_list"] = _onnx_with_meta(d / "labels_list.onnx", json.dumps(meta))
    return out


class _RunsCode:
    """A pickled object that would run a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_pickle(path: Path, marker: Path) -> Path:
    torch.save({"format": "medseg3d-checkpoint", "model": {}, "payload": _RunsCode(marker)}, path)
    return path


def _onnx_with_meta(path: Path, meta: str) -> Path:
    """A valid ONNX graph (identity, one input, one output) carrying ``meta`` as its medseg3d metadata."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "X", "Y", "Z"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, "X", "Y", "Z"])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"medseg3d": meta})
    onnx.save(model, str(path))
    return path


@dataclass
class Env:
    """One row's world: ``work`` holds its inputs and outputs (compared before and after), ``out`` is the
    output folder inside it; ``cache`` (outside ``work``) is where training may cache."""

    work: Path
    cache: Path
    ck: dict[str, Path]
    monkeypatch: pytest.MonkeyPatch

    @property
    def out(self) -> Path:
        return self.work / "out"


@pytest.fixture()
def env(tmp_path, ckpts, monkeypatch) -> Env:
    (tmp_path / "work").mkdir()
    return Env(tmp_path / "work", tmp_path / "cache", ckpts, monkeypatch)


# ------------------------------------------------------------------------------------------------ helpers
def invoke(*args) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def assert_one_error(r, expect: list[str], code: int = 1, strict: bool = True) -> str:
    """Exactly one ``error: `` line holding every fragment of ``expect``, no traceback, exit code ``code``;
    with ``strict``, that line is the whole output."""
    out = r.output
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    assert "Traceback" not in out and (r.exception is None or isinstance(r.exception, SystemExit)), out
    assert r.exit_code == code, out
    if strict:
        assert out.strip().splitlines() == errors, out
    for frag in expect:
        assert frag in errors[0], f"{frag!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` (hidden ones too): folders by name, files by size, content hash
    and modification time."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = ("dir",)
        for f in filenames:
            p = Path(dirpath) / f
            st = p.stat()
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, edit: Callable | None = None) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    if edit is not None:
        edit(img)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def scan(env: Env, name: str = "scan.nii.gz", data: np.ndarray | None = None, **kw) -> Path:
    return save_nifti(env.work / name, phantom(SHAPE) if data is None else data, **kw)


def noisy_scan(path: Path, seed: int = 0) -> Path:
    """A scan whose gzip stream is long (noise does not compress), so cutting it leaves a valid header and a
    broken voxel stream."""
    rng = np.random.default_rng(seed)
    return save_nifti(path, phantom(SHAPE) + rng.normal(0, 5, SHAPE).astype(np.float32))


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def good_output(path: Path) -> Path:
    """An earlier run's good label map where the failed run would write."""
    return save_nifti(path, (phantom(SHAPE) > 120).astype(np.uint8) * 3)


def segment(env: Env, inputs: list[Path], model: Optional[Path] = None, out: Optional[Path] = None, **kw):
    """The API twin of ``medseg3d infer``."""
    return lambda: medseg3d.segment_files([str(p) for p in inputs], str(model or env.ck["t1"]),
                                          str(out or env.out), log=lambda line: None, **kw)


@dataclass
class Bad:
    """A row: the command line, the fragments its one error line must hold, the API twin (must raise a
    MedsegError holding the same fragments) and the exit code."""

    args: list
    expect: list[str]
    api: Optional[Callable[[], Any]] = None
    code: int = 1
    after: Optional[Callable[[], None]] = None  # extra checks once both ran
    outside: list[Path] = field(default_factory=list)  # paths outside ``work`` that must not appear


def infer_args(env: Env, *inputs, model: Optional[Path] = None, out: Optional[Path] = None, extra=()) -> list:
    return ["infer", *inputs, "-m", model or env.ck["t1"], "-o", out or env.out, *extra]


ROWS: dict[str, Callable[[Env], Bad]] = {}


def row(fn: Callable[[Env], Bad]) -> Callable[[Env], Bad]:
    """Register a row; its test id is the function's name with dashes (``infer_missing_file`` ->
    ``infer-missing-file``)."""
    ROWS[fn.__name__.replace("_", "-")] = fn
    return fn


# ------------------------------------------------------------------------------------------------ the rows: scans
@row
def infer_missing_file(env: Env) -> Bad:
    p = env.work / "missing.nii.gz"
    return Bad(infer_args(env, p), [f"{p}: file not found"], segment(env, [p]))


@row
def infer_not_an_image(env: Env) -> Bad:
    p = env.work / "notes.nii.gz"
    p.write_text("patient notes, not an image\n")
    return Bad(infer_args(env, p), [f"{p}: not a readable NIfTI image", "check that it is a complete"],
               segment(env, [p]))


@row
def infer_unknown_format(env: Env) -> Bad:
    p = env.work / "scan.txt"
    p.write_text("1 2 3\n")
    return Bad(infer_args(env, p), [f"{p}: unknown image format '.txt'", "expected .nii.gz"], segment(env, [p]))


@row
def infer_truncated_nifti(env: Env) -> Bad:
    p = truncate(noisy_scan(env.work / "scan.nii.gz"))
    good_output(env.out / "scan.nii.gz")
    return Bad(infer_args(env, p), [f"{p}: the voxel data cannot be read (truncated or corrupt file",
                                    "copy or export the file again"], segment(env, [p]))


@row
def infer_single_slice_to_3d_model(env: Env) -> Bad:
    p = scan(env, data=phantom((16, 16, 1)))
    return Bad(infer_args(env, p), [f"{p}: is 2D (shape (16, 16, 1)); the model is 3D", "--allow-2d"],
               segment(env, [p]))


@row
def infer_wrong_channel_count(env: Env) -> Bad:
    p = scan(env, data=np.stack([phantom(SHAPE)] * 2, axis=-1))
    return Bad(infer_args(env, p), [f"{p}: has 2 channel(s) but the model expects 1", "give one file per channel"],
               segment(env, [p]))


@row
def infer_channel_shapes_differ(env: Env) -> Bad:
    a = scan(env, "case_0000.nii.gz")
    b = scan(env, "case_0001.nii.gz", data=phantom((16, 16, 12)))
    return Bad(infer_args(env, a, b, model=env.ck["t1t2"]),
               [f"{b}: shape (16, 16, 12) differs from {a} (16, 16, 16)", "resample them onto one"],
               segment(env, [a, b], env.ck["t1t2"]))


@row
def infer_channel_affines_differ(env: Env) -> Bad:
    a = scan(env, "case_0000.nii.gz")
    shifted = AFFINE.copy()
    shifted[:3, 3] += (0, 5.0, 0)
    b = scan(env, "case_0001.nii.gz", affine=shifted)
    return Bad(infer_args(env, a, b, model=env.ck["t1t2"]),
               [f"{b}: its geometry (affine) differs from {a}; channels must share one grid",
                "resample them onto one image's grid); here the origins are 5 mm apart"],
               segment(env, [a, b], env.ck["t1t2"]))


@row
def infer_nan_voxels(env: Env) -> Bad:
    data = phantom(SHAPE)
    data[3, 4, 5] = data[8, 8, 8] = np.nan
    p = scan(env, data=data)
    good_output(env.out / "scan.nii.gz")
    return Bad(infer_args(env, p), [f"{p}: 2 of 4096 voxel values are NaN or infinite", "replace them"],
               segment(env, [p]))


@row
def infer_infinite_voxels(env: Env) -> Bad:
    data = phantom(SHAPE)
    data[0, 0, 0] = np.inf
    p = scan(env, data=data)
    return Bad(infer_args(env, p), [f"{p}: 1 of 4096 voxel values are NaN or infinite"], segment(env, [p]))


@row
def infer_all_zero_image(env: Env) -> Bad:
    p = scan(env, data=np.zeros(SHAPE, np.float32))
    return Bad(infer_args(env, p), [f"{p}: the image is empty (every voxel is zero)",
                                    "check that this is the right file"], segment(env, [p]))


@row
def infer_4d_time_series_as_channels(env: Env) -> Bad:
    def seconds(img):
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = 2.0

    p = scan(env, data=np.stack([phantom(SHAPE)] * 2, axis=-1), edit=seconds)
    return Bad(infer_args(env, p, model=env.ck["t1t2"]),
               [f"{p}: is a 4D time series (shape (16, 16, 16, 2), one volume every 2 sec)",
                "save one time point as a 3D file"], segment(env, [p], env.ck["t1t2"]))


@row
def infer_header_30000_cubed(env: Env) -> Bad:
    """A header that promises 30000^3 float32 voxels (108 TB): refused from the header, no voxel read (the file
    holds none)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 30000))
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(AFFINE, 1)
    hdr.set_sform(AFFINE, 1)
    hdr["vox_offset"] = 352
    p = env.work / "huge.nii"
    p.write_bytes(hdr.binaryblock + b"\0" * 4)
    return Bad(infer_args(env, p), [f"{p}: the image (30000x30000x30000 voxels, 1 channel(s)) needs 108.0 TB",
                                    "of memory is available; crop or downsample it"], segment(env, [p]))


@row
def infer_empty_input_folder(env: Env) -> Bad:
    d = env.work / "scans"
    d.mkdir()
    return Bad(infer_args(env, d), [f"{d}: the folder is empty; give image files"], segment(env, [d]))


# ------------------------------------------------------------------------------------------------ outputs
@row
def infer_output_is_the_input(env: Env) -> Bad:
    p = scan(env)
    return Bad(infer_args(env, p, out=p), [f"{p}: would overwrite an input", "choose another output"],
               segment(env, [p], out=p))


@row
def infer_output_parent_is_a_file(env: Env) -> Bad:
    p = scan(env)
    blocker = env.work / "results"
    blocker.write_text("a file where the output folder's parent should be\n")
    out = blocker / "seg"
    return Bad(infer_args(env, p, out=out), [f"{out}: cannot create the output folder ({blocker} is a file, not a "
                                             "folder); choose another output folder"], segment(env, [p], out=out))


@row
def infer_output_on_readonly_filesystem(env: Env) -> Bad:
    if sys.platform != "linux":
        pytest.skip("/proc is Linux's")
    p = scan(env)
    out = Path("/proc/medseg3d_out")
    return Bad(infer_args(env, p, out=out), [f"{out}: cannot create the output folder", "choose another output folder"],
               segment(env, [p], out=out), outside=[out])


@row
def infer_disk_full(env: Env) -> Bad:
    """The label map's writer runs out of space half-way: no partial file, the earlier output untouched."""
    import medseg3d.inference.batch as batch

    real = batch.label_writer

    def full_disk(*args, **kwargs):
        write = real(*args, **kwargs)

        def write_half(path: str) -> None:
            write(path)
            Path(path).write_bytes(Path(path).read_bytes()[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return write_half

    env.monkeypatch.setattr(batch, "label_writer", full_disk)
    p = scan(env)
    good_output(env.out / "scan.nii.gz")
    return Bad(infer_args(env, p), [f"{env.out}: writing scan's outputs failed (No space left on device)",
                                    "free disk space"], segment(env, [p]))


@row
def infer_output_name_contradicts_format(env: Env) -> Bad:
    p = scan(env)
    out = env.work / "seg.nii.gz"
    return Bad(infer_args(env, p, out=out, extra=["--format", "nrrd"]),
               [f"{out}: the file name says nifti but --format is nrrd; name the file seg.nrrd or leave out --format"],
               segment(env, [p], out=out, fmt="nrrd"))


@row
def export_output_parent_is_a_file(env: Env) -> Bad:
    from medseg3d.inference.export import export_checkpoint

    blocker = env.work / "models"
    blocker.write_text("a file where the export's folder should be\n")
    out = blocker / "model.onnx"
    return Bad(["export", env.ck["t1"], "-o", out],
               [f"{blocker}: cannot create the output folder ({blocker} is a file, not a folder)"],
               lambda: export_checkpoint(env.ck["t1"], "onnx", out))


@row
def export_checkpoint_of_another_model(env: Env) -> Bad:
    """The export fails after its output folders were made: they are removed again."""
    from medseg3d.inference.export import export_checkpoint

    ck, out = env.ck["misfit"], env.work / "exports" / "v2" / "model.onnx"
    return Bad(["export", ck, "-o", out], [f"{ck}: its weights do not fit network 'unet'"],
               lambda: export_checkpoint(ck, "onnx", out))


# ------------------------------------------------------------------------------------------------ flags
@row
def infer_overlap_1_5(env: Env) -> Bad:
    p = scan(env)
    return Bad(infer_args(env, p, extra=["--overlap", "1.5"]),
               ["overlap 1.5 (--overlap, infer.overlap) is outside [0, 1)", "e.g. 0.5"], segment(env, [p], overlap=1.5))


@row
def infer_sw_batch_size_0(env: Env) -> Bad:
    p = scan(env)
    return Bad(infer_args(env, p, extra=["--sw-batch-size", "0"]),
               ["sw_batch_size 0 (--sw-batch-size, infer.sw_batch_size) must be a positive number", "e.g. 2"],
               segment(env, [p], sw_batch_size=0))


@row
def infer_min_size_negative(env: Env) -> Bad:
    p = scan(env)
    return Bad(infer_args(env, p, extra=["--min-size-ml", "-1"]),
               ["postprocessing option min_component_ml (--min-size-ml): input should be greater than or equal to 0, "
                "got -1.0"], segment(env, [p], postprocess={"min_component_ml": -1.0}))


@row
def infer_relabel_size_not_a_number(env: Env) -> Bad:
    p = scan(env)
    return Bad(infer_args(env, p, extra=["--relabel", "object:background:small"]),
               ["postprocessing option relabel.below_ml (--relabel): input should be a valid number", "got 'small'"],
               segment(env, [p], postprocess={"relabel": "object:background:small"}))


@row
def infer_channels_per_case_mismatch(env: Env) -> Bad:
    a, b, c = (scan(env, f"{n}.nii.gz") for n in "abc")
    return Bad(infer_args(env, a, b, c, model=env.ck["t1t2"], extra=["--channels-per-case", "2"]),
               ["--channels-per-case 2: the 3 file(s) given do not split into cases of 2 channel files",
                "give 2 files per case"], segment(env, [a, b, c], env.ck["t1t2"], channels_per_case=2))


@row
def infer_device_cuda_without_gpu(env: Env) -> Bad:
    env.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = scan(env)
    return Bad(infer_args(env, p, extra=["--device", "cuda"]),
               ["device 'cuda' was asked for but CUDA is not available on this machine", "use --device cpu"],
               segment(env, [p], device="cuda"))


# ------------------------------------------------------------------------------------------------ model files
@row
def infer_checkpoint_of_another_model(env: Env) -> Bad:
    p, ck = scan(env), env.ck["misfit"]
    return Bad(infer_args(env, p, model=ck), [f"{ck}: its weights do not fit network 'unet'",
                                                  "in the file but [8, 1, 3, 3, 3] in the network",
                                                  "use the checkpoint as training wrote it"],
               segment(env, [p], ck))


@row
def infer_truncated_checkpoint(env: Env) -> Bad:
    p, ck = scan(env), env.ck["truncated"]
    return Bad(infer_args(env, p, model=ck),
               [f"{ck}: not a readable medseg3d checkpoint (RuntimeError: PytorchStreamReader failed reading zip "
                "archive: failed finding central directory); is the file complete? Copy it again"],
               segment(env, [p], ck))


@row
def infer_hostile_pickle_checkpoint(env: Env) -> Bad:
    p, ck = scan(env), env.ck["pickle"]
    marker = ck.parent / "PWNED"

    def nothing_ran():
        assert not marker.exists()

    return Bad(infer_args(env, p, model=ck), [f"{ck}: not a readable medseg3d checkpoint: refused", "nothing was run"],
               segment(env, [p], ck), after=nothing_ran)


@row
def infer_onnx_metadata_not_json(env: Env) -> Bad:
    p, ck = scan(env), env.ck["onnx_text"]
    return Bad(infer_args(env, p, model=ck), [f"{ck}: its medseg3d metadata is not valid JSON", "re-export the model"],
               segment(env, [p], ck))


@row
def infer_onnx_metadata_malformed(env: Env) -> Bad:
    p, ck = scan(env), env.ck["onnx_labels_list"]
    return Bad(infer_args(env, p, model=ck), [f"{ck}: malformed head in its medseg3d metadata",
                                                  "write it again (medseg3d train, or export)"],
               segment(env, [p], ck))


# ------------------------------------------------------------------------------------------------ configs
def config_row(env: Env, text: str, expect: list[str]) -> Bad:
    cfg = env.work / "config.yaml"
    cfg.write_text(f"data: {{root: {env.work}}}\noutput_dir: {env.work / 'runs'}\n" + text)
    return Bad(["train", cfg], [f"{cfg}: ", *expect], lambda: load_config(cfg))


@row
def config_unknown_key(env: Env) -> Bad:
    return config_row(env, "train: {epocs: 3}\n", ["unknown key 'train.epocs' (did you mean 'train.epochs'?)"])


@row
def config_wrong_value_type(env: Env) -> Bad:
    return config_row(env, "train: {epochs: many}\n", ["'train.epochs' must be an integer, got 'many'"])


@row
def config_unknown_model_param(env: Env) -> Bad:
    return config_row(env, "model: {name: unet, params: {base_filter: 8}}\n",
                      ["unknown key 'model.params.base_filter' (did you mean 'model.params.base_filters'?)",
                       "network 'unet'"])


@row
def config_zero_patch_size(env: Env) -> Bad:
    return config_row(env, "train: {patch_size: [0, 16, 16]}\n",
                      ["train.patch_size must be three positive integers", "[0, 16, 16]"])


@row
def config_negative_patch_size(env: Env) -> Bad:
    return config_row(env, "train: {patch_size: [-16, 16, 16]}\n",
                      ["train.patch_size must be three positive integers", "[-16, 16, 16]"])


@row
def config_python_yaml_tag(env: Env) -> Bad:
    marker = env.work.parent / "PWNED"

    def nothing_ran():
        assert not marker.exists()

    bad = config_row(env, f"name: !!python/object/apply:os.system ['touch {marker}']\n",
                     ["not valid YAML: could not determine a constructor for the tag "
                      "'tag:yaml.org,2002:python/object/apply:os.system' at line 3, column 7", "remove the tag"])
    bad.after = nothing_ran
    return bad


# ------------------------------------------------------------------------------------------------ training data
def dataset(env: Env, n: int = 3, edit: Callable[[Path, dict], None] | None = None) -> Path:
    """An MSD-layout dataset of ``n`` 16^3 cases (one channel, labels background 0 / object 1) and a config
    training a tiny network on it; ``edit(root, meta)`` may damage it. Returns the config file."""
    root = env.work / "dataset"
    meta = {"name": "bad", "modality": {"0": "T1"}, "labels": {"0": "background", "1": "object"},
            "training": [], "test": []}
    for i in range(n):
        img = phantom(SHAPE) * (1 + 0.1 * i)
        save_nifti(root / "imagesTr" / f"case{i}.nii.gz", img)
        save_nifti(root / "labelsTr" / f"case{i}.nii.gz", (img > 120).astype(np.uint8))
        meta["training"].append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    if edit is not None:
        edit(root, meta)
    (root / "dataset.json").write_text(json.dumps(meta))
    cfg = {"name": "bad", "output_dir": str(env.work / "runs"),
           "data": {"root": str(root), "cache_dir": str(env.cache), "fold": "all"},
           "preprocess": {"spacing": list(SPACING)},
           "model": {"name": "unet", "params": {"base_filters": 2, "depth": 2}},
           "train": {"patch_size": [16, 16, 16], "batch_size": 1, "epochs": 1, "iters_per_epoch": 1,
                     "tensorboard": False, "device": "cpu"}}
    path = env.work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_row(cfg: Path, expect: list[str]) -> Bad:
    return Bad(["train", cfg], expect, lambda: medseg3d.train(cfg))


@row
def train_label_shape_differs(env: Env) -> Bad:
    lab = env.work / "dataset" / "labelsTr" / "case1.nii.gz"
    cfg = dataset(env, edit=lambda root, meta: save_nifti(lab, np.ones((16, 16, 12), np.uint8)))
    return train_row(cfg, [f"{lab}: label shape (16, 16, 12) differs from its image's (16, 16, 16)",
                           "resample it onto the image"])


@row
def train_label_shifted_14mm(env: Env) -> Bad:
    lab = env.work / "dataset" / "labelsTr" / "case1.nii.gz"
    shifted = AFFINE.copy()
    shifted[:3, 3] += (0, 0, 14.0)

    def shift(root, meta):
        save_nifti(lab, np.asarray(nib.load(lab).dataobj), affine=shifted)

    return train_row(dataset(env, edit=shift), [f"{lab}: label geometry (affine) differs from its image's",
                                                "the origin is 14 mm away", "resample it onto the image's grid"])


@row
def train_label_values_outside_labels(env: Env) -> Bad:
    lab = env.work / "dataset" / "labelsTr" / "case2.nii.gz"

    def add_values(root, meta):
        data = np.asarray(nib.load(lab).dataobj).copy()
        data[0, 0, :2] = (4, 7)
        save_nifti(lab, data)

    return train_row(dataset(env, edit=add_values), [f"{lab}: label value(s) [4, 7] are not among the config's "
                                                     "labels [0, 1]", "set data.labels"])


@row
def train_dataset_entry_points_nowhere(env: Env) -> Bad:
    def ghost(root, meta):
        meta["training"].append({"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/ghost.nii.gz"})

    cfg = dataset(env, edit=ghost)
    img = env.work / "dataset" / "imagesTr" / "ghost.nii.gz"
    return train_row(cfg, [f"{img}: listed in {env.work / 'dataset' / 'dataset.json'} but not found",
                           "fix the entry or put the file there"])


@row
def train_duplicate_case_ids(env: Env) -> Bad:
    def dup(root, meta):
        (root / "other").mkdir()
        save_nifti(root / "other" / "case0.nii.gz", phantom(SHAPE))
        meta["training"].append({"image": "./other/case0.nii.gz", "label": "./labelsTr/case0.nii.gz"})

    cfg = dataset(env, edit=dup)
    return train_row(cfg, [f"{env.work / 'dataset' / 'dataset.json'}: training entries 0 and 3 are both case 'case0'",
                           "rename or remove one"])


@row
def train_path_escapes_dataset(env: Env) -> Bad:
    def escape(root, meta):
        meta["training"][1]["image"] = "../../etc/passwd"

    cfg = dataset(env, edit=escape)
    return train_row(cfg, [f"{env.work / 'dataset' / 'dataset.json'}: training entry 1 image '../../etc/passwd' lies "
                           "outside the dataset folder", "list files inside it"])


@row
def train_patch_too_small_for_depth(env: Env) -> Bad:
    """Instance norm needs more than one voxel at the deepest level; a patch of 8^3 through three
    downsamplings leaves one."""
    cfg = dataset(env)
    c = yaml.safe_load(cfg.read_text())
    c["model"]["params"] = {"base_filters": 2, "depth": 3, "norm": "instance"}
    c["train"]["patch_size"] = [8, 8, 8]
    cfg.write_text(yaml.safe_dump(c))
    return train_row(cfg, ["train.patch_size [8, 8, 8] is too small for unet as configured: its deepest level would "
                           "be a single voxel (the network downsamples by [8, 8, 8]); use a patch of at least "
                           "[16, 16, 16], or a shallower network"])


@row
def check_target_missing(env: Env) -> Bad:
    p = env.work / "Task01_BrainTumour"
    return Bad(["check", p], [f"{p}: not found; give a dataset folder or a config file"])


# ------------------------------------------------------------------------------------------------ evaluate
def label_maps(env: Env, names: list[str], folder: str, shift_mm: float = 0.0) -> Path:
    d = env.work / folder
    aff = AFFINE.copy()
    aff[:3, 3] += (shift_mm, 0, 0)
    for name in names:
        save_nifti(d / f"{name}.nii.gz", (phantom(SHAPE) > 120).astype(np.uint8), affine=aff)
    return d


def evaluate_row(env: Env, pred: Path, ref: Path, expect: list[str]) -> Bad:
    from medseg3d.engine.metrics import evaluate_folders

    return Bad(["evaluate", pred, ref], expect, lambda: evaluate_folders(pred, ref))


@row
def evaluate_prediction_shifted_30mm(env: Env) -> Bad:
    ref = label_maps(env, ["a", "b"], "ref")
    pred = label_maps(env, ["a"], "pred") and label_maps(env, ["b"], "pred", shift_mm=30.0)
    return evaluate_row(env, pred, ref, [f"1 of 2 prediction(s) cannot be scored: {pred / 'b.nii.gz'}: its geometry "
                                         "differs from the reference's "
                                         "(origin 30.00 mm apart", "evaluate predictions in their scan's geometry"])


@row
def evaluate_probability_map_as_prediction(env: Env) -> Bad:
    ref = label_maps(env, ["a"], "ref")
    pred = env.work / "pred"
    save_nifti(pred / "a.nii.gz", np.full(SHAPE, 0.25, np.float32))
    return evaluate_row(env, pred, ref, [f"1 of 1 prediction(s) cannot be scored: {pred / 'a.nii.gz'}: a label map "
                                         "must hold integers, found 0.25", "give the label map"])


@row
def evaluate_predictions_missing(env: Env) -> Bad:
    ref = label_maps(env, ["a", "b", "c"], "ref")
    pred = label_maps(env, ["b"], "pred")
    return evaluate_row(env, pred, ref, [f"{pred}: no prediction for 2 of 3 reference(s) in {ref} (a, c)",
                                         "--allow-missing"])


# ------------------------------------------------------------------------------------------------ the table's test
@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input(name: str, env: Env):
    bad = ROWS[name](env)
    before = snapshot(env.work)
    assert_one_error(invoke(*bad.args), bad.expect, bad.code)
    assert snapshot(env.work) == before
    if bad.api is not None:
        with pytest.raises(MedsegError) as info:
            bad.api()
        assert "\n" not in str(info.value)
        for frag in bad.expect:
            assert frag in str(info.value), (frag, str(info.value))
        assert snapshot(env.work) == before
    for p in bad.outside:
        assert not p.exists()
    if bad.after is not None:
        bad.after()


def test_the_table_has_at_least_30_rows():
    assert len(ROWS) >= 30


# ------------------------------------------------------------------------------------------------ handled, not refused
def test_dicom_series_with_blank_uids_is_repaired_with_one_warning(env: Env):
    """An anonymised series whose StudyInstanceUID and SeriesInstanceUID are blank: the DICOM-SEG gets valid UIDs
    derived from the images (the same on every run), the user is told once, before inference; the series'
    files are not touched."""
    import pydicom

    from medseg3d.io.dicom import write_dicom_series

    series = env.work / "series"
    for f in write_dicom_series(phantom(SHAPE), AFFINE, series):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = ""
        ds.SeriesInstanceUID = ""
        ds.save_as(f)
    before = snapshot(series)
    r = invoke(*infer_args(env, series, extra=["--no-preview"]))
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    lines = r.output.strip().splitlines()
    warnings = [i for i, line in enumerate(lines) if "warning: " in line]
    assert len(warnings) == 1 and not any(line.startswith("error: ") for line in lines), r.output
    assert (f"series: warning: {series}: the source series has no valid StudyInstanceUID, SeriesInstanceUID; the "
            "DICOM-SEG gets new ones derived from the images' SOPInstanceUIDs") in lines[warnings[0]]
    assert warnings[0] < next(i for i, line in enumerate(lines) if "wrote" in line)  # told before inference
    assert snapshot(series) == before
    seg = pydicom.dcmread(env.out / "series.dcm")
    study = str(seg.StudyInstanceUID)
    assert study and str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)

    logged: list[str] = []
    medseg3d.segment_files([series], env.ck["t1"], env.work / "again", preview=False, log=logged.append)
    assert sum("warning: " in line for line in logged) == 1
    assert str(pydicom.dcmread(env.work / "again" / "series.dcm").StudyInstanceUID) == study  # same on every run


def test_batch_with_one_truncated_case_writes_the_others(env: Env):
    """Three cases, the second truncated: the others are written, the failed one is named in the one error
    line, exit code 1, its earlier good output is left as it was and nothing of it is written."""
    cases = env.work / "cases"
    for i, name in enumerate("abc"):
        noisy_scan(cases / f"{name}.nii.gz", seed=i)
    truncate(cases / "b.nii.gz")
    good_output(env.out / "b.nii.gz")
    kept = snapshot(env.out)["b.nii.gz"]
    r = invoke(*infer_args(env, cases, extra=["--no-preview"]))
    line = assert_one_error(r, ["1 of 3 case(s) failed (b); the other 2 were written"], strict=False)
    assert r.output.strip().splitlines()[-1] == line
    assert f"b: FAILED: {cases / 'b.nii.gz'}: the voxel data cannot be read" in r.output
    assert sorted(p.name for p in env.out.iterdir()) == ["a.json", "a.nii.gz", "b.nii.gz", "c.json", "c.nii.gz"]
    assert snapshot(env.out)["b.nii.gz"] == kept
    for name in "ac":
        assert nib.load(env.out / f"{name}.nii.gz").shape == SHAPE

    result = medseg3d.segment_files([cases], env.ck["t1"], env.work / "api", preview=False, log=lambda line: None)
    assert [c for c, _ in result.failed] == ["b"] and not result.ok
    assert sorted(p.case.name for p in result.written) == ["a", "c"]
    assert "the voxel data cannot be read" in result.failed[0][1]
    assert sorted(p.name for p in (env.work / "api").iterdir()) == ["a.json", "a.nii.gz", "c.json", "c.nii.gz"]


def _edit_config(cfg: Path, **train) -> Path:
    raw = yaml.safe_load(cfg.read_text())
    raw["train"].update(train)
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_patch_larger_than_every_image_trains_with_one_warning(env: Env):
    """The trainer pads patches to the patch size; the user is told once, with the largest image and the patch
    that would fit, and the run completes."""
    cfg = _edit_config(dataset(env), patch_size=[32, 32, 32])
    r = invoke("train", cfg)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning: ")]
    assert warnings == [line for line in r.output.splitlines() if "warning" in line], r.output
    assert len(warnings) == 1, r.output
    assert warnings[0].startswith("warning: train.patch_size [32, 32, 32] is larger than every preprocessed image "
                                  "(the largest are ")
    assert "set train.patch_size to at most [" in warnings[0]
    run = Path(r.output.strip().splitlines()[-1].removeprefix("done: "))
    assert (run / "last.pt").is_file()


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(env: Env):
    """SGD with lr 1e30 and no gradient clipping: the loss becomes NaN in epoch 2; the run stops with one
    error line naming the kept checkpoint (epoch 1, finite weights), and writes nothing half-done."""
    cfg = _edit_config(dataset(env), optimizer="sgd", lr=1e30, grad_clip=None, epochs=3)
    r = invoke("train", cfg)
    line = assert_one_error(r, ["training diverged at epoch 2", "the training loss is", "lower train.lr or turn on "
                                "train.grad_clip"], strict=False)
    runs = list((env.work / "runs").iterdir())
    assert len(runs) == 1
    last = runs[0] / "last.pt"
    assert f"the last good checkpoint is {last} (epoch 1)" in line
    ck = torch.load(last, weights_only=True)
    assert ck["epoch"] == 1 and all(torch.isfinite(t).all() for t in ck["model"].values())
    assert not [p for p in runs[0].iterdir() if p.name.startswith(".")]  # no temporary file left

    with pytest.raises(MedsegError, match="training diverged at epoch 2"):
        medseg3d.train(cfg)


def test_debug_is_the_only_way_to_a_traceback(tmp_path):
    """A real process: without --debug one ``error:`` line on stderr and exit code 1; with --debug the
    traceback of the MedsegError."""
    missing = tmp_path / "missing.yaml"
    envvars = {**os.environ, "PYTHONPATH": str(REPO)}
    plain = subprocess.run([sys.executable, "-m", "medseg3d", "check-config", str(missing)], capture_output=True,
                           text=True, env=envvars, cwd=tmp_path, timeout=120)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.splitlines() == [f"error: {missing}: config file not found"]
    debug = subprocess.run([sys.executable, "-m", "medseg3d", "--debug", "check-config", str(missing)],
                           capture_output=True, text=True, env=envvars, cwd=tmp_path, timeout=120)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert f"medseg3d.errors.MedsegError: {missing}: config file not found" in debug.stderr
    assert not list(tmp_path.iterdir())


def test_every_row_is_in_the_readme():
    """The README's bad-input table lists every row of this table (it is the user's copy of it)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in ROWS if f"`{name}`" not in readme]
    assert not missing, f"rows missing from README.md's bad-input table: {missing}"
