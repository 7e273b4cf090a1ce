"""Export a checkpoint's network to ONNX or TorchScript, and run an exported ONNX model in medseg3d's own
sliding window.

The exported graph takes ``image`` (N, C_in, X, Y, Z) and returns ``logits`` (N, C, X, Y, Z) in eval mode.
It is traced at the config's ``train.patch_size``, which is the size of every sliding-window window; the batch
axis is dynamic, and the spatial axes accept other sizes that are multiples of the network's divisor (the
padding to the divisor is fixed at trace time). The checkpoint's config, channel and label names travel with
the file (ONNX metadata ``medseg3d``; TorchScript extra file ``medseg3d.json``), so an exported ONNX model can
be given to ``Segmenter.from_checkpoint`` / ``medseg3d infer -m`` like a checkpoint.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from ..config import Config, validate_config
from ..errors import MedsegError
from ..io.scan import PathLike, atomic_write, first_line
from ..models import main_output

EXPORT_FORMATS = ("onnx", "torchscript")
META_KEY = "medseg3d"


class _Logits(torch.nn.Module):
    """The network's full-resolution logits only (what the sliding window needs)."""

    def __init__(self, model: torch.nn.Module, domain: str | None = None):
        super().__init__()
        self.model = model
        self.domain = domain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return main_output(self.model(x, domain=self.domain) if self.domain else self.model(x))


def export_checkpoint(checkpoint: PathLike, fmt: str, output: PathLike, domain: str | None = None) -> Path:
    """Write the checkpoint's network (eval mode, on the CPU) as ONNX or TorchScript to ``output``; for a
    multi-domain model, the sub-network of ``domain`` (default: the first)."""
    from .segmenter import Segmenter

    if fmt not in EXPORT_FORMATS:
        raise MedsegError(f"unknown export format '{fmt}'; use {' or '.join(EXPORT_FORMATS)}")
    seg = Segmenter.from_checkpoint(checkpoint, device="cpu", domain=domain)
    if Path(output).resolve() == Path(seg.members[0].source).resolve():
        raise MedsegError(f"{output}: would overwrite the checkpoint; choose another output file")
    member = seg.members[0]
    net = _Logits(member.model, member.domain).eval()
    cfg = seg.config
    example = torch.zeros(1, len(seg.channels), *cfg.train.patch_size)
    meta = json.dumps({"config": cfg.model_dump(mode="json"), "channels": seg.channels, "labels": seg.labels,
                       "regions": seg.regions, "domain": member.domain})
    if fmt == "onnx":
        import onnx

        buf = io.BytesIO()
        axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
        torch.onnx.export(net, (example,), buf, dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes})
        proto = onnx.load_from_string(buf.getvalue())
        onnx.helper.set_model_props(proto, {META_KEY: meta})
        return atomic_write(output, lambda tmp: onnx.save(proto, tmp))
    with torch.no_grad():
        traced = torch.jit.trace(net, example)
    return atomic_write(output, lambda tmp: torch.jit.save(traced, tmp, _extra_files={f"{META_KEY}.json": meta}))


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session as a module, so it runs in the same sliding window as a PyTorch network."""

    def __init__(self, path: PathLike, providers: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise MedsegError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out).to(x.device)


def load_onnx(path: PathLike) -> tuple[OnnxModel, Config, dict]:
    """An exported ONNX file -> (model, config, head): head holds the channel names, labels, regions (None
    for softmax outputs) and the domain it was exported for (None for single-domain models)."""
    model = OnnxModel(path)
    raw = model.session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise MedsegError(f"{path}: ONNX model has no medseg3d metadata; export it with 'medseg3d export'")
    meta = json.loads(raw)
    head = {"channels": meta["channels"], "labels": meta["labels"], "regions": meta.get("regions"),
            "domain": meta.get("domain")}
    return model, validate_config(meta["config"], source=str(path)), head
