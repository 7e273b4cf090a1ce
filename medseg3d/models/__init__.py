"""The networks. Importing this package registers every net in :data:`medseg3d.registry.MODELS`."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import MODELS
from .base import MainOutput, SegNet, main_output
from . import unet  # noqa: F401  (registers)
from . import vnet, nonewnet, segresnet_vae, fcn  # noqa: F401  (registers)
from . import u2net3d, unetpp, multiresunet  # noqa: F401  (registers)


#: defaults that changed when the nets were rebuilt from the shared encoder/decoder parts, per net: a checkpoint
#: written before then, whose config leaves these arguments out, was trained with these values and must be
#: rebuilt with them (its weights then load, renamed by each net's ``legacy_keys``). V-Net's residual add now
#: comes before the activation, as in the authors' model: older V-Net weights compute another function, and
#: with PReLU (the default) they no longer load.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "u2net3d": {"levels": 5, "deep_supervision": False, "side_outputs": "list"},
    "unetpp": {"inference_mode": "fast"},
}


def build_model(name: str, spatial_dims: int, in_channels: int, out_channels: int, **params: Any) -> nn.Module:
    """Build a registered network by name; an unknown name lists the valid ones."""
    cls = MODELS.get(name)
    return cls(spatial_dims, in_channels, out_channels, **params)


__all__ = ["MainOutput", "SegNet", "build_model", "main_output", "MODELS", "LEGACY_DEFAULTS"]
