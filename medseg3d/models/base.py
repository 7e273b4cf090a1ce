"""The contract every network in medseg3d follows.

``Net(spatial_dims, in_channels, out_channels, *, ...)`` returns logits. In training mode a net with deep
supervision returns a list of logits, all at the input's resolution, the full-resolution head first; the
AE-regularised net returns a dict ``{"seg", "recon", "mu", "logvar"}``. In eval mode every net returns one
tensor of logits. Any input size works: :class:`SegNet` pads the input up to the net's divisor and crops
every full-size output back.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def pad_to_divisor(x: torch.Tensor, divisor: int | Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Pad the spatial axes of ``x`` (N, C, *spatial) at their far end up to a multiple of ``divisor``."""
    spatial = x.shape[2:]
    divs = [divisor] * len(spatial) if isinstance(divisor, int) else list(divisor)
    target = [int(math.ceil(s / d) * d) for s, d in zip(spatial, divs)]
    if list(spatial) == target:
        return x, list(spatial)
    pad: list[int] = []
    for s, t in reversed(list(zip(spatial, target))):
        pad += [0, t - s]
    return F.pad(x, pad), list(spatial)


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if list(x.shape[2:]) == list(size):
        return x
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]


def main_output(out: Any) -> torch.Tensor:
    """The full-resolution segmentation logits of any net's output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out["seg"]
    if isinstance(out, (list, tuple)):
        return out[0]
    raise TypeError(f"unexpected network output of type {type(out).__name__}")


class SegNet(nn.Module):
    """Base of all medseg3d networks.

    Subclasses set ``paper`` (citation), ``dims`` (supported spatial dims) and implement ``_forward``; the
    ``divisor`` attribute (int or per-axis tuple) is the factor every spatial size must divide by.
    """

    paper: str = ""
    dims: tuple[int, ...] = (2, 3)
    divisor: int | tuple[int, ...] = 1

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        if spatial_dims not in self.dims:
            raise ValueError(f"spatial_dims must be one of {self.dims} for {type(self).__name__}, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)

    def _forward(self, x: torch.Tensor, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{type(self).__name__} expects a {self.spatial_dims + 2}-D input (N, C, *spatial), got shape {tuple(x.shape)}"
            )
        xp, size = pad_to_divisor(x, self.divisor)
        out = self._forward(xp, **kwargs)
        if xp is x:
            return out
        full = list(xp.shape[2:])

        def crop(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and list(t.shape[2:]) == full:
                return crop_to(t, size)
            return t

        if isinstance(out, dict):
            return {k: crop(v) for k, v in out.items()}
        if isinstance(out, (list, tuple)):
            return [crop(t) for t in out]
        return crop(out)
