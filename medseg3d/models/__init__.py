"""The networks. Importing this package registers every net in :data:`medseg3d.registry.MODELS`."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import MODELS
from .base import SegNet, main_output
from . import unet  # noqa: F401  (registers)
from . import vnet, nonewnet, segresnet_vae, fcn  # noqa: F401  (registers)
from . import u2net3d, unetpp, multiresunet  # noqa: F401  (registers)


def build_model(name: str, spatial_dims: int, in_channels: int, out_channels: int, **params: Any) -> nn.Module:
    """Build a registered network by name; an unknown name lists the valid ones."""
    cls = MODELS.get(name)
    return cls(spatial_dims, in_channels, out_channels, **params)


__all__ = ["SegNet", "build_model", "main_output", "MODELS"]
