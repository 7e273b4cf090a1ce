"""A checkpoint as a MONAI bundle: a folder that MONAI runs on its own, without medseg3d.

``medseg3d export CHECKPOINT --format monai-bundle -o FOLDER`` writes::

    FOLDER/configs/metadata.json    MONAI's bundle metadata: channels, labels, the network's input/output spec
    FOLDER/configs/inference.json   the inference pipeline as MONAI components and expressions
    FOLDER/configs/logging.conf     MONAI's usual console logging
    FOLDER/models/model.ts          the network as TorchScript (eval mode, traced at the window size)
    FOLDER/scripts/postprocess.py   (only when the checkpoint's config postprocesses) numpy/scipy functions
    FOLDER/docs/README.md           the labels, and how to run it

and ``python -m monai.bundle run --config_file FOLDER/configs/inference.json --dataset_dir SCANS --output_dir
OUT`` segments every ``*.nii``/``*.nii.gz``/``*.nrrd``/``*.mha`` in ``SCANS`` as ``medseg3d infer`` does (without
TTA or ensembles): ``LoadImaged`` -> ``EnsureChannelFirstd`` -> the checkpoint's preprocessing as MONAI
transforms (``Orientationd``, ``Spacingd``, ``CropForegroundd`` on nonzero voxels, ``NormalizeIntensityd``; CT
normalisation as a per-channel clip and ``NormalizeIntensityd`` with the dataset's mean and std) ->
``SlidingWindowInferer`` (``SliceInferer`` for a 2D model) with the checkpoint's window, overlap and blending ->
``Activationsd`` (softmax, or sigmoid for regions) -> ``Invertd`` (the probabilities back onto the scan's grid,
interpolated as medseg3d does) -> voxels outside the crop become background -> ``AsDiscreted`` (argmax, or
threshold 0.5 for regions) -> ``MapLabelValued`` (class indices -> the label values of the files; regions are
painted in order, WT -> 2, TC -> 1, ET -> 4, by a ``Lambdad``) -> the config's postprocessing -> ``SaveImaged``.
The pipeline needs MONAI, torch and nibabel (scipy for postprocessing; fire for MONAI's command line), not
pytorch-ignite: the run loop is a MONAI config expression. 2.5D models (``model.context_slices`` > 0) are refused: MONAI has no transform that
stacks neighbouring slices as channels with the border replicated.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Head, ModelContract
from ..data.labels import region_write_values
from ..errors import MedsegError
from ..io.nifti import label_dtype
from ..io.scan import PathLike, current_umask
from ..version import __version__
from . import postprocess as _post
from .export import save_torchscript, torchscript_module, window_size

MODEL_FILE = "models/model.ts"
POSTPROCESS_FILE = "scripts/postprocess.py"
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
INPUT_PATTERNS = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha")
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def write_monai_bundle(contract: ModelContract, output: PathLike, domain: str | None = None) -> Path:
    """Write ``contract`` (one domain's network for a multi-domain model) as a MONAI bundle folder ``output``,
    which must not exist or be empty. The folder is assembled next to ``output`` and renamed into place, so a
    failure leaves nothing behind."""
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedsegError(f"{out}: already exists and is not an empty folder; a bundle is written into a new folder")
    cfg = contract.config
    if cfg.model.spatial_dims == 2 and cfg.model.context_slices > 0:
        raise MedsegError(f"{contract.source}: a 2.5D model (model.context_slices {cfg.model.context_slices}) cannot "
                          f"be written as a MONAI bundle: MONAI has no transform that stacks neighbouring slices as "
                          f"channels; export it as onnx or torchscript and run it with medseg3d infer")
    head = contract.head(domain)
    if head.regions:
        try:
            region_write_values(head.regions)
        except ValueError as e:
            raise MedsegError(f"{contract.source}: its regions cannot be painted back as labels ({e})") from None
    traced, meta = torchscript_module(contract, domain)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-bundle-", dir=out.parent))
    try:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        save_torchscript(traced, meta, tmp / MODEL_FILE)
        steps = postprocess_steps(contract, head)
        if steps:
            (tmp / "scripts").mkdir()
            (tmp / POSTPROCESS_FILE).write_text(postprocess_source())
        final = out.resolve()
        _write_json(tmp / "configs" / "inference.json", inference_config(contract, head, str(final), steps))
        _write_json(tmp / "configs" / "metadata.json", metadata(contract, head, steps))
        (tmp / "configs" / "logging.conf").write_text(LOGGING_CONF)
        (tmp / "docs" / "README.md").write_text(readme(contract, head, steps))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it private
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n")


# ---- the pipeline -----------------------------------------------------------------------------------------------
def preprocessing(contract: ModelContract) -> list[dict[str, Any]]:
    """medseg3d's preprocessing (:func:`medseg3d.data.transforms.preprocess_transforms`) as MONAI components, after
    loading: reorientation, resampling, crop to the nonzero voxels of any channel, normalisation."""
    p = contract.config.preprocess
    out: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": p.orientation,
         "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
    ]
    if p.spacing is not None:
        out.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(p.spacing), "mode": "bilinear"})
    if p.crop_foreground:
        out.append({"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                    "select_fn": "$lambda x: x != 0", "allow_smaller": True,
                    "_desc_": "crop to the voxels where any channel is nonzero"})
    if p.normalize == "ct":
        stats = p.intensity_stats or []
        lo, hi = [s.lower for s in stats], [s.upper for s in stats]
        out += [{"_target_": "Lambdad", "keys": "image", "_desc_": "clip each channel to the dataset's [p0.5, p99.5]",
                 "func": f"$lambda x: torch.maximum(torch.minimum(x, x.new_tensor({hi}).view(-1, 1, 1, 1)), "
                         f"x.new_tensor({lo}).view(-1, 1, 1, 1))"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True,
                 "subtrahend": [s.mean for s in stats], "divisor": [max(s.std, 1e-8) for s in stats],
                 "_desc_": "z-score with the dataset's foreground mean and std per channel"}]
    elif p.normalize != "none":
        out.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": p.normalize == "zscore_nonzero",
                    "channel_wise": True})
    out.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return out


def inferer(contract: ModelContract) -> dict[str, Any]:
    cfg = contract.config
    inf = cfg.infer
    common = {"roi_size": window_size(contract), "sw_batch_size": inf.sw_batch_size, "overlap": inf.overlap,
              "mode": inf.blend}
    if cfg.model.spatial_dims == 2:
        from ..data.slices import slice_axis

        return {"_target_": "SliceInferer", "spatial_dim": slice_axis(cfg), **common}
    return {"_target_": "SlidingWindowInferer", **common}


def postprocess_steps(contract: ModelContract, head: Head) -> list[str]:
    """The config's postprocessing as calls of the functions in ``scripts/postprocess.py`` on a label map
    ``a`` (X, Y, Z) of file values, with ``per_ml`` voxels per ml (medseg3d's order)."""
    post = contract.config.postprocess
    fg = [v for v in head.labels.values() if v != 0]
    steps = []
    if post.min_component_ml > 0:
        steps.append(f"remove_small_components(a, {fg}, {post.min_component_ml} * per_ml)")
    if post.largest_component:
        steps.append(f"keep_largest_component(a, {fg})")
    if post.fill_holes:
        steps.append(f"fill_holes(a, {fg})")
    if post.relabel is not None:
        r = post.relabel
        for key in (r.source, r.target):
            if key not in head.labels:
                raise MedsegError(f"{contract.source}: postprocess.relabel names class '{key}' but the model's "
                                  f"classes are {', '.join(head.labels)}")
        steps.append(f"relabel_small_class(a, {head.labels[r.source]}, {head.labels[r.target]}, "
                     f"{r.below_ml} * per_ml)")
    return steps


def postprocess_source() -> str:
    """``scripts/postprocess.py``: medseg3d's postprocessing functions (numpy and scipy only) and ``apply``."""
    parts = [f'"""Postprocessing of a label map, as medseg3d {__version__} does it (numpy and scipy only).\n\n'
             f'Connected components are 26-connected; sizes are in voxels."""\n\n',
             "import numpy as np\nfrom scipy import ndimage\n\n",
             "STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity\n\n\n"]
    for fn in (_post.components, _post.remove_small_components, _post.keep_largest_component, _post.fill_holes,
               _post.relabel_small_class):
        parts.append(inspect.getsource(fn) + "\n\n")
    parts.append('''def apply(x, steps):
    """Run ``steps`` (expressions of ``a``, the label map (X, Y, Z), and ``per_ml``, voxels per ml) on ``x``, a
    (1, X, Y, Z) MetaTensor of label values whose affine gives the voxel volume."""
    import torch

    affine = np.asarray(x.affine, dtype=np.float64)
    per_ml = 1000.0 / abs(float(np.linalg.det(affine[:3, :3])))
    a = np.asarray(x[0].detach().cpu().numpy()).astype(np.int32)
    for step in steps:
        a = eval(step, dict(globals()), {"a": a, "per_ml": per_ml})
    out = x.clone()
    out[0] = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    return out
''')
    return "".join(parts)


def postprocessing(contract: ModelContract, head: Head, steps: list[str]) -> list[dict[str, Any]]:
    """Probabilities -> label values on the scan's grid, as ``Segmenter.labels_from_probabilities`` and
    ``postprocess``."""
    values = list(head.labels.values())
    out: list[dict[str, Any]] = [
        {"_target_": "Activationsd", "keys": "pred", **({"sigmoid": True} if head.regions else {"softmax": True})},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True,
         "_desc_": "the probabilities back onto the input's grid (crop, resampling and orientation undone)"},
    ]
    if head.regions:
        write = region_write_values(head.regions)
        paint = "torch.zeros_like(x[:1])"
        for i, name in enumerate(head.regions):
            paint = f"torch.where(x[{i}:{i + 1}] > 0, {write[name]}, {paint})"
        out += [{"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {"_target_": "Lambdad", "keys": "pred", "func": f"$lambda x: {paint}",
                 "_desc_": "paint the regions in order (" + ", ".join(f"{k} -> {v}" for k, v in write.items())
                           + "): the label values of the files"}]
    else:
        out += [{"_target_": "Lambdad", "keys": "pred",
                 "func": "$lambda x: torch.cat([x[:1] + (1 - x.sum(0, keepdim=True)).clamp(min=0), x[1:]])",
                 "_desc_": "voxels outside the preprocessing crop (no probability) are background"},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
        if values != list(range(len(values))):
            out.append({"_target_": "MapLabelValued", "keys": "pred", "orig_labels": list(range(len(values))),
                        "target_labels": values, "_desc_": "class indices -> the label values of the files"})
    if steps:
        out.append({"_target_": "Lambdad", "keys": "pred",
                    "func": f"$lambda x: @postprocess_functions['apply'](x, {steps!r})",
                    "_desc_": "the checkpoint's postprocessing (scripts/postprocess.py)"})
    out.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir",
                "output_postfix": "@output_postfix", "output_ext": "@output_ext",
                "output_dtype": str(label_dtype(values)), "resample": True, "mode": "nearest",
                "separate_folder": False, "print_log": True,
                "_desc_": "the map is on the input's grid already; resample: true only makes MONAI's writer treat it as "
                          "3D (with resample: false MONAI 1.6 takes a squeezed 3D map for 2D and fails on inputs whose "
                          "axes are permuted)"})
    return out


def inference_config(contract: ModelContract, head: Head, bundle_root: str, steps: list[str]) -> dict[str, Any]:
    """``configs/inference.json``."""
    patterns = ", ".join(repr(p) for p in INPUT_PATTERNS)
    cfg: dict[str, Any] = {
        "imports": ["$import glob", "$import os", "$import runpy", "$import torch"],
        "bundle_root": f"$next((p for p in [{bundle_root!r}, '.'] if os.path.isfile(os.path.join(p, "
                       f"{MODEL_FILE!r}))), {bundle_root!r})",
        "dataset_dir": "",
        "datalist": f"$sorted(f for p in [{patterns}] for f in glob.glob(os.path.join(@dataset_dir, p))) "
                    f"if @dataset_dir else []",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "output_postfix": "seg",
        "output_ext": ".nii.gz",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": f"$torch.jit.load(os.path.join(@bundle_root, {MODEL_FILE!r}), map_location=@device)",
        "network": "$@network_def.eval()",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing(contract)},
        "dataset": {"_target_": "Dataset",
                    "data": "$[{'image': f} for f in ([@datalist] if isinstance(@datalist, str) else @datalist)]",
                    "transform": "@preprocessing"},
        "inferer": inferer(contract),
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing(contract, head, steps)},
        "predict": "$lambda d: @postprocessing(dict(d, pred=@inferer(d['image'].unsqueeze(0).to(@device), "
                   "@network)[0].cpu()))",
        "initialize": ["$torch.set_grad_enabled(False)"],
        "run": ["$len(@dataset) or (_ for _ in ()).throw(ValueError('no input images: give --dataset_dir DIR (every "
                + ", ".join(INPUT_PATTERNS) + " in it) or --datalist with the files'))",
                "$[@predict(@dataset[i]) for i in range(len(@dataset))]"],
    }
    if steps:
        cfg["postprocess_functions"] = f"$runpy.run_path(os.path.join(@bundle_root, {POSTPROCESS_FILE!r}))"
    return cfg


# ---- metadata and docs ------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import monai
    import nibabel
    import torch

    from importlib.metadata import PackageNotFoundError, version

    try:
        fire = version("fire")
    except PackageNotFoundError:
        fire = "0.4"  # MONAI's command line needs some version of it
    return {"monai": monai.__version__, "torch": torch.__version__.split("+")[0], "numpy": np.__version__,
            "nibabel": nibabel.__version__, "fire": fire}


def metadata(contract: ModelContract, head: Head, steps: list[str] = ()) -> dict[str, Any]:
    """``configs/metadata.json`` after MONAI's bundle schema: versions, task, channels, labels and the network's
    input and output."""
    cfg, v = contract.config, _versions()
    shape = window_size(contract)  # a 2D model takes (N, C, X, Y) slices
    outputs = list(head.regions) if head.regions else list(head.labels)
    what = "sigmoid region" if head.regions else "softmax class"
    return {
        "schema": SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medseg3d {__version__} from {Path(contract.source).name}"},
        "monai_version": v["monai"],
        "pytorch_version": v["torch"],
        "numpy_version": v["numpy"],
        "required_packages_version": {"nibabel": v["nibabel"], "fire": v["fire"],
                                      **({"scipy": _scipy_version()} if steps else {})},
        "name": cfg.name,
        "task": f"{cfg.model.spatial_dims}D segmentation of {', '.join(n for n in head.labels if head.labels[n])}",
        "description": (f"medseg3d {cfg.model.name} ({cfg.model.spatial_dims}D) trained with config '{cfg.name}'"
                        + (f", domain '{head.domain}'" if head.domain else "")
                        + "; the network is TorchScript (models/model.ts), the pipeline plain MONAI."),
        "authors": "medseg3d",
        "copyright": "the authors of the training data and of the model",
        "data_type": "nibabel",
        "image_classes": f"{len(head.channels)} channel(s): {', '.join(head.channels)}",
        "label_classes": ", ".join(f"{v} = {n}" for n, v in head.labels.items()),
        "pred_classes": (f"{len(outputs)} {what} channel(s): {', '.join(outputs)}; written as one label map with "
                         f"the values {', '.join(f'{v} = {n}' for n, v in head.labels.items())}"),
        "intended_use": "research; not for clinical diagnosis",
        "references": [],
        "medseg3d": {"labels": dict(head.labels), "channels": list(head.channels),
                     "regions": {k: list(x) for k, x in head.regions.items()} if head.regions else None,
                     "domain": head.domain, "network": cfg.model.name},
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "MR" if cfg.preprocess.normalize != "ct" else "CT",
                "num_channels": len(head.channels), "spatial_shape": shape, "dtype": "float32",
                "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): c for i, c in enumerate(head.channels)}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(outputs), "spatial_shape": shape,
                "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): n for i, n in enumerate(outputs)}}},
        },
    }


def _scipy_version() -> str:
    import scipy

    return scipy.__version__


def readme(contract: ModelContract, head: Head, steps: list[str]) -> str:
    cfg = contract.config
    p, inf = cfg.preprocess, cfg.infer
    rows = "\n".join(f"| {v} | {n} |" for n, v in head.labels.items())
    regions = ""
    if head.regions:
        write = region_write_values(head.regions)
        regions = ("\nThe network predicts overlapping regions (one sigmoid each), thresholded at 0.5 and painted in "
                   "this order:\n\n" + "\n".join(f"- {k} (labels {'+'.join(map(str, v))}) -> {write[k]}"
                                                for k, v in head.regions.items()) + "\n")
    norm = {"zscore_nonzero": "z-score per channel on the nonzero voxels", "zscore": "z-score per channel",
            "ct": "clip to the dataset's [p0.5, p99.5] and z-score with its mean and std, per channel",
            "none": "none"}[p.normalize]
    post = "; ".join(f"`{s}`" for s in steps) if steps else "none"
    chans = ", ".join(f"{i}: {c}" for i, c in enumerate(head.channels))
    patterns = "`, `".join(INPUT_PATTERNS)
    domain = f", domain {head.domain}" if head.domain else ""
    scipy = " (and scipy)" if steps else ""
    slices = " over slices (2D network)" if cfg.model.spatial_dims == 2 else ""
    act = "Sigmoid" if head.regions else "Softmax"
    to_labels = ("thresholded at 0.5 and painted as labels" if head.regions else
                 "voxels outside the crop are background; argmax; class indices mapped to the label values")
    crop = "; crop to the voxels where any channel is nonzero" if p.crop_foreground else ""
    spacing = f"resample to {p.spacing} mm" if p.spacing else "keep the scan's spacing"
    return f"""# {cfg.name}: a medseg3d model as a MONAI bundle

{cfg.model.name} ({cfg.model.spatial_dims}D){domain}, exported by medseg3d {__version__} from `{Path(contract.source).name}`.

The network is TorchScript (`models/model.ts`); the pipeline is plain MONAI (`configs/inference.json`).
Running it needs MONAI, torch, nibabel and fire (MONAI's command line){scipy}; not medseg3d, not pytorch-ignite
(`pip install monai nibabel fire`).

## Run it

FOLDER is this bundle's folder:

```bash
python -m monai.bundle run --config_file FOLDER/configs/inference.json \\
    --dataset_dir /data/scans --output_dir /data/segmentations
```

- `--dataset_dir DIR` segments every `{patterns}` in `DIR`. Or name the files:
  `--datalist "['/data/a.nii.gz', '/data/b.nii.gz']"`. A file holds all channels of a case (4D NIfTI,
  channels last); a case stored as one file per channel is a list in the datalist, in the channel order below:
  `--datalist "[['c_t1.nii.gz', 'c_t1ce.nii.gz', ...]]"`.
- Output: `OUTPUT_DIR/<input name>_seg.nii.gz` (default `FOLDER/eval/`), the label map on the input's own grid
  (its shape and affine); `--output_postfix` changes the suffix.
- The bundle finds its files in the folder it was written to, or in the current folder; if it was moved, run
  it from inside its folder or add `--bundle_root FOLDER`.
- A GPU is used when there is one; `--device "$torch.device('cpu')"` forces the CPU.

## Input channels

{len(head.channels)} channel(s), in this order: {chans}.

## Labels

| value | name |
|---:|---|
{rows}
{regions}
## What the pipeline does (as `medseg3d infer`, without TTA or ensembles)

1. Load, channels first; reorient to {p.orientation}; {spacing}{crop}; normalisation: {norm}.
2. Sliding window{slices}: window {window_size(contract)}, overlap {inf.overlap}, {inf.blend} blending,
   {inf.sw_batch_size} windows per batch.
3. {act}; the probabilities are brought back onto the input's grid (`Invertd`, linear interpolation);
   {to_labels}.
4. Postprocessing: {post}
5. Saved with the input's affine and shape.
"""
