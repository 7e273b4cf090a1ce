"""Building a config's network: ``model.params`` completed from the rest of the config, then the registry."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..config import Config
from ..data.slices import model_in_channels
from ..errors import MedsegError
from ..models import MODELS, build_model


def model_params(cfg: Config) -> dict[str, Any]:
    """``model.params`` completed from the rest of the config: ``input_image_size`` (the AE-regularised net's
    VAE needs the training patch size) is filled in from ``train.patch_size`` for any net that takes it, and
    ``domains`` from ``data.domains``."""
    params = dict(cfg.model.params)
    sig = inspect.signature(MODELS.get(cfg.model.name).__init__).parameters
    patch = list(cfg.train.patch_size)
    if "input_image_size" in sig:
        if params.get("input_image_size") is None:
            params["input_image_size"] = patch
        elif list(params["input_image_size"]) != patch:
            raise MedsegError(f"model.params.input_image_size {list(params['input_image_size'])} must equal "
                              f"train.patch_size {patch} (leave it out and it is taken from the patch size)")
    if cfg.data.domains:
        if params.get("domains") not in (None, list(cfg.data.domains)):
            raise MedsegError(f"model.params.domains {params['domains']} differs from data.domains "
                              f"{list(cfg.data.domains)}; leave it out")
        params["domains"] = list(cfg.data.domains)
    return params


def build_network(cfg: Config, in_channels: int | dict, out_channels: int | dict) -> nn.Module:
    """The config's network (random weights); for a multi-domain config ``in_channels``/``out_channels`` are
    dicts per domain. ``in_channels`` counts image channels (a 2.5D net gets each once per context slice)."""
    m = cfg.model
    in_channels = model_in_channels(cfg, in_channels)
    try:
        return build_model(m.name, m.spatial_dims, in_channels, out_channels, **model_params(cfg))
    except (TypeError, ValueError) as e:
        raise MedsegError(f"model.params of '{m.name}': {e}") from None
