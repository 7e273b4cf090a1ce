"""A 2D network over a 3D volume: slice by slice, in batches, stacked back into a volume.

:func:`medseg3d.inference.predictor.predict_logits` dispatches here when ``model.spatial_dims`` is 2, so training
validation and the Segmenter (and ``medseg3d infer``) share it. The slice axis is moved out, each slice gets its
2.5D stack (``model.context_slices`` neighbours on each side as channels; beyond the first and last slices the
border slice is *replicated*, as in training), and batches of ``infer.sw_batch_size`` slices go through a MONAI
2D sliding window over ``train.patch_size`` (one window when the slice fits in the patch; larger slices are
tiled with the config's overlap and blending). The logits go back to (N, C, X, Y, Z) in the input's axis order.
"""

from __future__ import annotations

from typing import Callable

import torch
from monai.inferers import sliding_window_inference

from ..config import Config
from ..data.slices import patch_2d, slice_axis, stack_slices


def predict_logits_slices(net: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, cfg: Config,
                          device: torch.device | str = "cpu", out_device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits (N, C, X, Y, Z) of a 2D net (``net``: a batch of 2.5D slices -> their full-resolution logits; run
    under ``torch.no_grad`` with the model in eval mode) for preprocessed volumes ``image`` (N, C_in, X, Y, Z)."""
    if image.ndim != 5:
        raise ValueError(f"expected a batch of volumes (N, C, X, Y, Z), got shape {tuple(image.shape)}")
    axis, k, inf = slice_axis(cfg), cfg.model.context_slices, cfg.infer
    roi = patch_2d(cfg, axis)
    vol = image.movedim(2 + axis, 2)  # (N, C, S, A, B)
    n, _, s = vol.shape[:3]
    per_call = max(1, inf.sw_batch_size)  # slices per forward pass
    chunks = []
    for start in range(0, s, per_call):
        stop = min(s, start + per_call)
        x = stack_slices(vol, k, start, stop).to(device)  # (N·(stop-start), C·(2k+1), A, B)
        y = sliding_window_inference(x, roi, per_call, net, overlap=inf.overlap, mode=inf.blend,
                                     sw_device=device, device=out_device)
        chunks.append(y.reshape(n, stop - start, *y.shape[1:]))
    out = torch.cat(chunks, dim=1)           # (N, S, C, A, B)
    return out.movedim(1, 2).movedim(2, 2 + axis)  # (N, C, S, A, B) -> slice axis back in place


def window_shape(cfg: Config, channels: int) -> list[int]:
    """(input channels, *window) of the windows the predictor runs: the 3D window (``infer.window_size``, else
    the patch), or a 2D model's slice window with its 2.5D stack of channels."""
    if cfg.model.spatial_dims == 2:
        return [channels * (2 * cfg.model.context_slices + 1), *patch_2d(cfg)]
    return [channels, *(cfg.infer.window_size or cfg.train.patch_size)]
