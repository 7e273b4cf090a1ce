"""The contract every network in medseg3d follows.

``Net(spatial_dims, in_channels, out_channels, *, ...)`` returns logits. In training mode a net with deep
supervision returns a list of logits, all at the input's resolution, the full-resolution head first; the
AE-regularised net returns a dict ``{"seg", "recon", "mu", "logvar"}``. In eval mode every net returns one
tensor of logits. Any input size works: :class:`SegNet` pads the input up to the net's divisor and crops
every full-size output back.

Tracing (``torch.jit.trace``, ``torch.onnx.export(..., dynamo=False)``): the padding and the crop are computed
from the traced input's shape with tensor operations, never through Python numbers, so a traced or exported
net pads and crops whatever input size it is given, and tracing emits no ``TracerWarning``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

#: a legacy state-dict key rule: (regular expression on the key, replacement string or function of the match)
KeyRule = tuple[str, Union[str, Callable[["re.Match[str]"], str]]]


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_dropout(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def _spatial_sizes(x: torch.Tensor) -> list[Any]:
    # x.shape[i] is an int in eager mode and a traced size while tracing: kept as is, never converted
    return [x.shape[i] for i in range(2, x.dim())]


def pad_to_divisor(x: torch.Tensor, divisor: int | Sequence[int]) -> tuple[torch.Tensor, list[Any]]:
    """Pad the spatial axes of ``x`` (N, C, *spatial) at their far end up to a multiple of ``divisor``.

    Returns the padded tensor and the original spatial sizes. In eager mode an input that needs no padding
    is returned as is; while tracing the (possibly zero) padding is always recorded, so the traced graph pads
    any input size."""
    spatial = _spatial_sizes(x)
    divs = [divisor] * len(spatial) if isinstance(divisor, int) else list(divisor)
    pad: list[Any] = []
    for s, d in reversed(list(zip(spatial, divs))):
        pad += [0, (d - s % d) % d]
    if not torch.jit.is_tracing() and not any(pad):
        return x, spatial
    return F.pad(x, pad), spatial


def crop_to(x: torch.Tensor, size: Sequence[Any]) -> torch.Tensor:
    """The first ``size`` voxels of each spatial axis of ``x`` (undoes :func:`pad_to_divisor`)."""
    if not torch.jit.is_tracing() and list(x.shape[2:]) == list(size):
        return x
    for axis, s in enumerate(size):
        x = x.narrow(2 + axis, 0, s)
    return x


def main_output(out: Any) -> torch.Tensor:
    """The full-resolution segmentation logits of any net's output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out["seg"]
    if isinstance(out, (list, tuple)):
        return out[0]
    raise TypeError(f"unexpected network output of type {type(out).__name__}")


def _remap_legacy_keys(module: "SegNet", state_dict: dict, prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: renames the keys of a checkpoint written before the net was built from the
    shared encoder/decoder parts (see :meth:`SegNet.legacy_keys`)."""
    rules = module.legacy_keys()
    if not rules:
        return
    own = set(module.state_dict().keys())
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest in own:
            continue
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, rest, count=1)
            if n:
                if new in own and prefix + new not in state_dict:
                    state_dict[prefix + new] = state_dict.pop(key)
                break


class MainOutput(nn.Module):
    """A network reduced to its full-resolution logits (of one domain of a multi-domain network): what a
    sliding window, an exported graph or an inference engine runs."""

    def __init__(self, model: nn.Module, domain: str | None = None):
        super().__init__()
        self.model = model
        self.domain = domain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return main_output(self.model(x, domain=self.domain) if self.domain else self.model(x))


class SegNet(nn.Module):
    """Base of all medseg3d networks.

    Subclasses set ``paper`` (citation), ``dims`` (supported spatial dims) and implement ``_forward``; the
    ``divisor`` attribute (int or per-axis tuple) is the factor every spatial size must divide by.
    ``variants`` names keyword presets worth listing next to the defaults (``medseg3d models`` shows them).
    """

    paper: str = ""
    dims: tuple[int, ...] = (2, 3)
    divisor: Any = 1
    variants: dict[str, dict[str, Any]] = {}

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        if spatial_dims not in self.dims:
            raise ValueError(f"spatial_dims must be one of {self.dims} for {type(self).__name__}, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.register_load_state_dict_pre_hook(_remap_legacy_keys)

    def legacy_keys(self) -> list[KeyRule]:
        """Rules renaming the state-dict keys of older checkpoints of this net to the current ones (applied
        by ``load_state_dict`` to keys the net does not have)."""
        return []

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
        rank = x.dim()

        def crop(t: Any) -> Any:
            # every output with the input's rank is full-size (segmentation, reconstruction, deep supervision);
            # others (the VAE's mu/logvar) have no spatial axes
            return crop_to(t, size) if isinstance(t, torch.Tensor) and t.dim() == rank else t

        if isinstance(out, dict):
            return {k: crop(v) for k, v in out.items()}
        if isinstance(out, (list, tuple)):
            return [crop(t) for t in out]
        return crop(out)
