"""The one predictor: a network meets a whole volume here, for training's validation, the Segmenter (``infer``),
and export checks alike.

- :func:`predict_logits`: logits of a preprocessed volume by MONAI's sliding window (3D) or slice by slice
  (2D/2.5D, :mod:`medseg3d.inference.slices`), with a GPU-stitching fallback.
- :func:`probability_passes`: softmax (or sigmoid) probabilities of one plain pass, or with TTA one per
  mirroring of the axes the model's training mirrored (recorded in the model contract), each flipped back.
- :class:`Predictor`: a scan through each ensemble member's preprocessing, its passes, the probabilities
  inverted onto the scan's own grid (MONAI inverts the very transforms that ran), averaged over passes and
  members.
"""

from __future__ import annotations

import copy
import itertools
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from ..bundle import Head
from ..config import Config
from ..data.transforms import preprocess_transforms, scan_to_metatensor
from ..errors import MedsegError
from ..io.scan import Scan
from ..models import MainOutput, SegNet

GPU_FALLBACK_WARNING = "volume does not fit in GPU memory; stitching on the CPU"

WindowFn = Callable[[torch.Tensor], torch.Tensor]


def network_fn(model: torch.nn.Module, domain: str | None = None) -> WindowFn:
    """The function a window goes through: the network's full-resolution logits (one domain's head)."""
    return MainOutput(model, domain)


def predict_logits(model: torch.nn.Module, image: torch.Tensor, cfg: Config,
                   device: torch.device | str = "cpu", out_device: torch.device | str = "cpu",
                   domain: str | None = None, window_fn: WindowFn | None = None) -> torch.Tensor:
    """Logits (N, C, *spatial) for a batch of preprocessed volumes (N, C_in, *spatial) by a MONAI sliding window
    over ``train.patch_size`` windows with the config's overlap and blending; a 2D model (``model.spatial_dims:
    2``) runs slice by slice. Windows run on ``device`` (through ``window_fn`` when given, e.g. an ONNX Runtime
    session; else the model in eval mode); the stitched result is accumulated on ``out_device``. When stitching
    on a GPU runs out of memory, it warns once and stitches on the CPU instead (windows stay on the GPU)."""
    out_device = torch.device(out_device)
    try:
        return _sliding_window(model, image, cfg, device, out_device, domain, window_fn)
    except torch.cuda.OutOfMemoryError:
        if out_device.type == "cpu":
            raise
        torch.cuda.empty_cache()
        warnings.warn(GPU_FALLBACK_WARNING, RuntimeWarning, stacklevel=2)
        return _sliding_window(model, image, cfg, device, torch.device("cpu"), domain, window_fn)


def _sliding_window(model, image, cfg, device, out_device, domain=None, window_fn=None) -> torch.Tensor:
    net = window_fn or network_fn(model, domain)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if cfg.model.spatial_dims == 2:
                from .slices import predict_logits_slices

                return predict_logits_slices(net, image, cfg, device, out_device)
            inf = cfg.infer
            return sliding_window_inference(image.to(device), inf.window_size or cfg.train.patch_size,
                                            inf.sw_batch_size, net,
                                            overlap=inf.overlap, mode=inf.blend, sw_device=device,
                                            device=out_device)
    finally:
        model.train(was_training)


def mirrorings(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every combination of the mirrored spatial axes (0..2), the identity first."""
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), r)]


def probability_passes(model: torch.nn.Module, image: torch.Tensor, cfg: Config, device: torch.device | str = "cpu",
                       mirror_axes: tuple[int, ...] = (), domain: str | None = None, sigmoid: bool = False,
                       window_fn: WindowFn | None = None) -> Iterator[torch.Tensor]:
    """Probabilities (N, C, *spatial) of each pass (softmax, or with ``sigmoid`` one per region output): one
    plain pass, plus one per mirroring of ``mirror_axes`` (spatial axes of the volume; TTA), each flipped back
    onto the input grid. Windows run and are stitched on ``device``."""
    for axes in mirrorings(mirror_axes):
        dims = tuple(2 + a for a in axes)
        x = torch.flip(image, dims) if dims else image
        logits = predict_logits(model, x, cfg, device, out_device=device, domain=domain, window_fn=window_fn).float()
        probs = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)
        yield torch.flip(probs, dims) if dims else probs


@dataclass
class Member:
    """One network of an ensemble: the model (or exported graph), its config, head and TTA axes, and the
    preprocessing pipeline (shared by members with the same preprocessing)."""

    model: torch.nn.Module
    config: Config
    head: Head
    mirror_axes: tuple[int, ...]
    source: str
    pre: mt.Compose
    runners: dict = field(default_factory=dict, repr=False)  # window shape -> the engine that runs its windows

    @property
    def domain(self) -> str | None:
        return self.head.domain


class Predictor:
    """Scans -> probabilities on each scan's own grid, for one network or an ensemble (probabilities averaged
    over members and TTA passes). Windows run through the engine the member's ``infer`` settings (or
    ``engine``/``precision`` here, or the ``MEDSEG3D_ENGINE``/``MEDSEG3D_PRECISION`` environment) ask for
    (:mod:`medseg3d.inference.engines`), built once per member and window shape."""

    def __init__(self, device: torch.device, tta: bool = False, engine: str | None = None,
                 precision: str | None = None):
        from .engines import ENGINES, PRECISIONS

        if engine not in (None, "auto", *ENGINES):
            raise MedsegError(f"unknown inference engine '{engine}'; use auto, {', '.join(ENGINES)}")
        if precision not in (None, "auto", *PRECISIONS):
            raise MedsegError(f"unknown inference precision '{precision}'; use auto, {', '.join(PRECISIONS)}")
        self.device = device
        self.tta = tta
        self.engine, self.precision = engine, precision
        self.members: list[Member] = []

    def window_fn(self, m: Member) -> WindowFn:
        """The engine that runs ``m``'s windows (built on first use)."""
        from .engines import make_runner
        from .slices import window_shape

        cfg = m.config
        shape = window_shape(cfg, len(m.head.channels))
        if tuple(shape) not in m.runners:
            inf = cfg.infer
            engine = self.engine or os.environ.get("MEDSEG3D_ENGINE") or inf.engine
            precision = self.precision or os.environ.get("MEDSEG3D_PRECISION") or inf.precision
            if not isinstance(m.model, SegNet):  # an exported graph (ONNX Runtime session, TorchScript) runs as is
                engine, precision = "torch", "fp32"
            m.runners[tuple(shape)] = make_runner(m.model, shape, engine, precision, self.device, inf.threads,
                                                  skip_empty=inf.skip_empty, domain=m.domain,
                                                  sigmoid=bool(m.head.regions))
        return m.runners[tuple(shape)]

    def add(self, model: torch.nn.Module, config: Config, head: Head, mirror_axes: tuple[int, ...] = (),
            source: str = "model") -> Member:
        """Add a network; members with the same preprocessing share one pipeline, so a scan is preprocessed once
        (MONAI inverts with the very transform instances that ran)."""
        pre = next((m.pre for m in self.members if m.config.preprocess == config.preprocess), None) \
            or mt.Compose(preprocess_transforms(config, keys=("image",)))
        member = Member(model.to(self.device).eval(), config, head, tuple(mirror_axes), source, pre)
        self.members.append(member)
        return member

    def reconfigure(self, member: Member, config: Config) -> None:
        """Give a member another config (e.g. a coarser grid); its preprocessing is rebuilt (shared again with
        members that have the same preprocessing)."""
        member.config = config
        member.runners.clear()
        member.pre = next((m.pre for m in self.members if m is not member and m.config.preprocess == config.preprocess),
                          None) or mt.Compose(preprocess_transforms(config, keys=("image",)))

    def check_memory(self, scan: Scan, variance: bool = False) -> int:
        """Refuse, before any preprocessing, a scan whose preprocessing and inference would not fit in the
        available memory (with the estimate in the message); returns the estimate in bytes."""
        from ..io.memory import check_memory

        zoom = 1.0
        for m in self.members:  # the finest preprocessing grid of the ensemble
            spacing = m.config.preprocess.spacing
            if spacing is not None:
                native = np.sqrt((scan.affine[:3, :3] ** 2).sum(0))
                zoom = max(zoom, float(np.prod(native / np.asarray(spacing))))
        c_in, c_out = scan.data.shape[0], self.members[0].head.n_out
        # per voxel of the scan, in float32 arrays: the preprocessed copies (x2), the stitched logits and their
        # weights on the preprocessed grid, the probabilities inverted to the scan (x2 for variance)
        factor = c_in * 2 * zoom + (c_out + 1) * 2 * zoom + c_out * (4 if variance else 2)
        source = scan.sources[0] if scan.sources else scan.name
        return check_memory(source, scan.shape, c_in, factor / c_in, what="with preprocessing and inference")

    def describe(self) -> dict:
        """The window engine of each member (for reports): engine, precision, threads, how it was chosen,
        windows run and skipped."""
        engines = [r.describe() for m in self.members for r in m.runners.values()]
        return {"engines": engines}

    @property
    def sigmoid(self) -> bool:
        return bool(self.members and self.members[0].head.regions)

    @torch.no_grad()
    def _member_moments(self, m: Member, x: MetaTensor, scan: Scan, second: bool) -> tuple[np.ndarray, int]:
        """Mean (and, with ``second``, mean square) of the probabilities over the member's passes on ``x`` (the
        scan through the member's preprocessing), on the scan's grid: (C or 2C, X, Y, Z); and the pass count."""
        total, total_sq, n = 0, 0, 0
        axes = m.mirror_axes if self.tta else ()
        for p in probability_passes(m.model, x.as_tensor()[None], m.config, self.device, axes,
                                    domain=m.domain, sigmoid=self.sigmoid, window_fn=self.window_fn(m)):
            if p.shape[1] != m.head.n_out:
                what = "regions" if m.head.regions else "labels"
                raise MedsegError(f"{m.source}: the network gives {p.shape[1]} outputs but the model names "
                                  f"{m.head.n_out} {what}; the model file is inconsistent")
            total = total + p[0]
            if second:
                total_sq = total_sq + p[0] ** 2
            n += 1
        stacked = torch.cat([total / n, total_sq / n]) if second else total / n
        ops = copy.deepcopy(x.applied_operations)  # the inverse consumes them; x may serve another member
        inv = m.pre.inverse({"image": MetaTensor(stacked.cpu(), meta=x.meta, applied_operations=ops)})
        out = inv["image"].as_tensor().numpy()
        if out.shape[1:] != scan.shape:
            raise RuntimeError(f"internal: inverted shape {out.shape[1:]} != scan shape {scan.shape}")
        return out, n

    def probabilities(self, scan: Scan, variance: bool = False) -> tuple[np.ndarray, Optional[np.ndarray], int]:
        """Probabilities (C, X, Y, Z) on the scan's grid averaged over TTA passes and members (region
        probabilities (R, ...) for a region-trained model); with ``variance``, also the per-voxel variance over
        all passes (mean over classes); and the number of passes. Voxels outside the preprocessing crop are
        background."""
        if not self.members:
            raise MedsegError("no model to predict with")
        if not np.any(scan.data):
            raise MedsegError(f"{scan.sources[0] if scan.sources else 'image'}: the image is empty (every voxel is "
                              f"zero), so there is nothing to segment; check that this is the right file")
        self.check_memory(scan, variance)
        for m in self.members:
            for r in m.runners.values():
                r.reset_stats()  # (each case's report counts its own windows)
        prepared: dict[int, MetaTensor] = {}  # one preprocessing per shared pipeline
        moments, passes = 0, 0
        for m in self.members:  # a running sum: one member's probabilities on the scan's grid at a time
            if id(m.pre) not in prepared:
                prepared[id(m.pre)] = m.pre({"image": scan_to_metatensor(scan)})["image"]
            out, n = self._member_moments(m, prepared[id(m.pre)], scan, variance)
            moments, passes = moments + out * n, passes + n
            del out
        moments = moments / passes
        c = self.members[0].head.n_out
        probs = moments[:c]
        var = np.clip(moments[c:] - probs ** 2, 0, None).mean(0) if variance else None
        if not self.sigmoid:  # outside the crop nothing was predicted: background (regions are 0 there already)
            probs[0] += np.clip(1 - probs.sum(0), 0, None)
        return probs, var, passes
