"""The one place where a network meets a whole (preprocessed) volume: used by validation during training and
by the Segmenter, so both see the same predictions. Test-time augmentation (mirroring) lives here too."""

from __future__ import annotations

import itertools
import warnings
from typing import Iterator

import torch
from monai.inferers import sliding_window_inference

from ..config import Config
from ..models import main_output

GPU_FALLBACK_WARNING = "volume does not fit in GPU memory; stitching on the CPU"


def predict_logits(model: torch.nn.Module, image: torch.Tensor, cfg: Config,
                   device: torch.device | str = "cpu", out_device: torch.device | str = "cpu",
                   domain: str | None = None) -> torch.Tensor:
    """Logits (N, C, *spatial) for a batch of preprocessed volumes (N, C_in, *spatial) by a MONAI sliding
    window over ``train.patch_size`` windows with the config's overlap and blending. Windows run on
    ``device``; the stitched result is accumulated on ``out_device``. A 2D model (``model.spatial_dims: 2``)
    runs slice by slice (:mod:`medseg3d.inference.slices`). ``domain`` selects the sub-network of a
    multi-domain model (u2net3d). When stitching on a GPU runs out of memory, it warns once and stitches on
    the CPU instead (windows stay on the GPU)."""
    out_device = torch.device(out_device)
    try:
        return _sliding_window(model, image, cfg, device, out_device, domain)
    except torch.cuda.OutOfMemoryError:
        if out_device.type == "cpu":
            raise
        torch.cuda.empty_cache()
        warnings.warn(GPU_FALLBACK_WARNING, RuntimeWarning, stacklevel=2)
        return _sliding_window(model, image, cfg, device, torch.device("cpu"), domain)


def _sliding_window(model, image, cfg, device, out_device, domain=None) -> torch.Tensor:
    if cfg.model.spatial_dims == 2:
        from .slices import predict_logits_slices

        return predict_logits_slices(model, image, cfg, device, out_device)
    inf = cfg.infer

    def net(x: torch.Tensor) -> torch.Tensor:
        return main_output(model(x, domain=domain) if domain else model(x))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return sliding_window_inference(image.to(device), cfg.train.patch_size, inf.sw_batch_size, net,
                                            overlap=inf.overlap, mode=inf.blend, sw_device=device,
                                            device=out_device)
    finally:
        model.train(was_training)


def mirror_axes(spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """Every combination of mirrored spatial axes (as tensor dims of (N, C, *spatial)), the identity first."""
    dims = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(dims, r)]


def probability_passes(model: torch.nn.Module, image: torch.Tensor, cfg: Config, device: torch.device | str = "cpu",
                       tta: bool = False, domain: str | None = None, sigmoid: bool = False) -> Iterator[torch.Tensor]:
    """Probabilities (N, C, *spatial) of each pass (softmax, or with ``sigmoid`` one per region output): one
    plain pass, or with ``tta`` one per mirroring of the spatial axes (2^3 in 3D), each flipped back onto the
    input grid. Windows run and are stitched on ``device`` (on a GPU that runs out of memory, stitched on the
    CPU)."""
    for axes in mirror_axes(image.ndim - 2) if tta else [()]:
        x = torch.flip(image, axes) if axes else image
        logits = predict_logits(model, x, cfg, device, out_device=device, domain=domain).float()
        probs = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)
        yield torch.flip(probs, axes) if axes else probs
