"""Export a model's network to ONNX or TorchScript, or the whole inference pipeline as a MONAI bundle.

The exported graph takes ``image`` (N, C_in, X, Y, Z) and returns ``logits`` (N, C, X, Y, Z) in eval mode.
It is traced at the sliding window's window size (``infer.window_size``, else ``train.patch_size``); the batch
and spatial axes are dynamic (the padding to the network's divisor is part of the graph, so any window size
works). The model contract (config, channel and label names, regions, mirror axes) travels with the file (ONNX
metadata ``medseg3d``; TorchScript extra file ``medseg3d.json``), so an exported file is given to
``Segmenter.from_checkpoint`` / ``medseg3d infer -m`` like a checkpoint.

``monai-bundle`` writes a folder that MONAI runs on its own (``python -m monai.bundle run``), without medseg3d:
see :mod:`medseg3d.inference.monai_bundle`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import torch

from ..bundle import ModelContract, load_model
from ..bundle.contract import meta_json
from ..bundle.exported import META_KEY
from ..errors import MedsegError
from ..models import MainOutput
from ..io.scan import PathLike, atomic_write

EXPORT_FORMATS = ("onnx", "torchscript", "monai-bundle")


def window_size(contract: ModelContract) -> list[int]:
    """The sliding window's window size: ``infer.window_size``, else ``train.patch_size``; for a 2D model the
    in-plane patch (the slices' window)."""
    cfg = contract.config
    if cfg.model.spatial_dims == 2:
        from ..data.slices import patch_2d

        return patch_2d(cfg)
    return list(cfg.infer.window_size or cfg.train.patch_size)


def export_checkpoint(checkpoint: PathLike, fmt: str, output: PathLike, domain: str | None = None) -> Path:
    """Write the checkpoint's network (eval mode, on the CPU) as ONNX or TorchScript to ``output``, or a MONAI
    bundle folder (``fmt`` ``monai-bundle``); for a multi-domain model, the sub-network of ``domain`` (default:
    the first)."""
    if fmt not in EXPORT_FORMATS:
        raise MedsegError(f"unknown export format '{fmt}'; use {', '.join(EXPORT_FORMATS[:-1])} or "
                          f"{EXPORT_FORMATS[-1]}")
    contract = load_model(checkpoint)
    if contract.module is not None:
        raise MedsegError(f"{checkpoint}: is already an exported model; export from a checkpoint or run folder")
    if Path(output).resolve() == Path(contract.source).resolve():
        raise MedsegError(f"{output}: would overwrite the checkpoint; choose another output file")
    if fmt == "monai-bundle":
        from .monai_bundle import write_monai_bundle

        return write_monai_bundle(contract, output, domain)
    if Path(output).is_dir():
        raise MedsegError(f"{output}: is a folder; give the file to write, e.g. {Path(output) / 'model.onnx'}")
    from .batch import _remove_empty, check_writable

    created = check_writable(Path(output).parent)  # before the export's work: the folder must take the file
    try:
        if fmt == "onnx":
            import onnx

            proto = onnx_model(contract, domain)
            return atomic_write(output, lambda tmp: onnx.save(proto, tmp))
        traced, meta = torchscript_module(contract, domain)
        return save_torchscript(traced, meta, output)
    except OSError as e:  # disk full, permissions changed: the temporary file is gone, nothing was written
        raise MedsegError(f"{output}: writing the exported model failed ({e.strerror or e}), so nothing was "
                          f"written; free disk space or choose another output file") from None
    finally:
        if not Path(output).exists():
            _remove_empty(created)  # a folder made for a file that never came is not left behind


def _example(contract: ModelContract, head, size: Sequence[int] | None) -> torch.Tensor:
    return torch.zeros(1, len(head.channels) * _stack(contract), *(size or window_size(contract)))


class _quiet(warnings.catch_warnings):
    """The warnings of tracing that say nothing about the exported graph."""

    def __enter__(self):
        out = super().__enter__()
        # the exporter warns that instance norm without running statistics is exported "with train=True": that
        # is the same computation (the statistics of the input itself), as the tests check against PyTorch
        warnings.filterwarnings("ignore", message=".*Exporting with train=True.*")
        warnings.filterwarnings("ignore", message=".*TrainingMode.EVAL.*")
        # TorchScript is deprecated in favour of torch.export, but it is what MONAI bundles and C++ runtimes load
        warnings.filterwarnings("ignore", message=r".*`torch\.jit\.\w+` is deprecated.*")
        return out


def onnx_model(contract: ModelContract, domain: str | None = None, size: Sequence[int] | None = None):
    """The network of ``domain`` as an ONNX ``ModelProto`` with the contract as metadata ``medseg3d``."""
    import onnx

    model, head = contract.build(domain)
    net = MainOutput(model, head.domain).eval()
    example = _example(contract, head, size)
    buf = io.BytesIO()
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"} if example.ndim == 5 else {0: "batch", 2: "x", 3: "y"}
    with _quiet():
        torch.onnx.export(net, (example,), buf, dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes})
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, {META_KEY: meta_json(contract, domain)})
    return proto


def torchscript_module(contract: ModelContract, domain: str | None = None,
                       size: Sequence[int] | None = None) -> tuple[torch.jit.ScriptModule, str]:
    """The network of ``domain`` traced (eval mode, CPU) at ``size`` (default: the window size), and the contract
    JSON that goes with it."""
    model, head = contract.build(domain)
    net = MainOutput(model, head.domain).eval()
    example = _example(contract, head, size)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(net, example)
    return traced, meta_json(contract, domain)


def save_torchscript(traced: torch.jit.ScriptModule, meta: str, output: PathLike) -> Path:
    with _quiet():
        return atomic_write(output, lambda tmp: torch.jit.save(traced, tmp, _extra_files={f"{META_KEY}.json": meta}))


def _stack(contract) -> int:
    """Input channels per image channel: 2k+1 for a 2.5D model."""
    m = contract.config.model
    return 2 * m.context_slices + 1 if m.spatial_dims == 2 else 1
