"""Exported models read back as a model contract: an ONNX file (run with ONNX Runtime) or a TorchScript file,
each carrying the contract as JSON (ONNX metadata property ``medseg3d``; TorchScript extra file
``medseg3d.json``). The metadata is parsed as data and checked; anything malformed is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import MedsegError
from ..io.scan import PathLike, first_line
from .contract import ModelContract, contract_from_meta

META_KEY = "medseg3d"


def _parse(raw: str | bytes | None, path: PathLike, where: str) -> dict:
    if not raw:
        raise MedsegError(f"{path}: {where} has no medseg3d metadata; export the model with 'medseg3d export'")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedsegError(f"{path}: its medseg3d metadata is not valid JSON ({e}); re-export the model") from None
    if not isinstance(meta, dict):
        raise MedsegError(f"{path}: its medseg3d metadata is not a mapping; re-export the model")
    return meta


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session as a module, so it runs in the same sliding window as a PyTorch network."""

    def __init__(self, path: PathLike, providers: list[str] | None = None, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise MedsegError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise MedsegError(f"{path}: an exported medseg3d model has one input (image) and an output (logits); "
                              f"this one has {len(inputs)} input(s)")
        self.input_name = inputs[0].name
        self.out_channels = outputs[0].shape[1] if len(outputs[0].shape) > 1 else None
        self.path = str(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        except Exception as e:  # ONNX Runtime's own error types
            raise MedsegError(f"{self.path}: ONNX Runtime could not run the model on a window of shape "
                              f"{tuple(x.shape)} ({first_line(e)})") from None
        return torch.from_numpy(out).to(x.device)


def _check_outputs(contract: ModelContract, n_out, path: PathLike) -> ModelContract:
    head = contract.head(contract.exported_domain)
    if isinstance(n_out, int) and n_out != head.n_out:
        what = "regions" if head.regions else "labels"
        raise MedsegError(f"{path}: the network has {n_out} outputs but its metadata names {head.n_out} {what}; "
                          f"the file is inconsistent, re-export it")
    return contract


def load_onnx(path: PathLike) -> ModelContract:
    model = OnnxModel(path)
    meta = _parse(model.session.get_modelmeta().custom_metadata_map.get(META_KEY), path, "the ONNX model")
    return _check_outputs(contract_from_meta(meta, str(path), module=model), model.out_channels, path)


def load_torchscript(path: PathLike) -> ModelContract:
    """A TorchScript file written by ``medseg3d export --format torchscript`` (TorchScript is code: load only
    files you trust)."""
    files = {f"{META_KEY}.json": ""}
    try:
        module = torch.jit.load(str(Path(path)), map_location="cpu", _extra_files=files)
    except Exception as e:  # torch raises RuntimeError and friends for damaged archives
        raise MedsegError(f"{path}: not a readable TorchScript model ({first_line(e)})") from None
    meta = _parse(files[f"{META_KEY}.json"], path, "the TorchScript model")
    return contract_from_meta(meta, str(path), module=module.eval())
