"""Building blocks shared by every network: one ``spatial_dims`` argument makes each of them 2D or 3D.

Norms and activations are given as MONAI-style names or ``(name, {kwargs})`` tuples so that they fit YAML:
``"instance"``, ``("group", {"num_groups": 8})``, ``"leakyrelu"``, ``("leakyrelu", {"negative_slope": 0.01})``.

Instance norm is MONAI's ``"instance"`` (``torch.nn.InstanceNorm{1,2,3}d``, same arguments and weights), except
that while tracing it calls the instance-norm operator directly (``F.instance_norm``'s Python-side size check
would turn traced sizes into Python numbers), and that while exporting to ONNX it runs as the identical group
norm with one group per channel: the exporter then writes the same ``InstanceNormalization`` node, without
warning that it exports instance norm "with train=True" (instance norm always uses the input's statistics, in
eval mode too; the warning is about nothing). Group norm likewise skips its Python-side size check while
tracing.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

LayerSpec = Union[str, tuple, list, None]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROPOUT = {1: nn.Dropout, 2: nn.Dropout2d, 3: nn.Dropout3d}


def _spec(spec: LayerSpec) -> Any:
    # YAML gives lists where MONAI expects tuples
    if isinstance(spec, list):
        return tuple(spec)
    return spec


def conv(spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int | Sequence[int] = 3, stride: int = 1,
         padding: int | Sequence[int] | None = None, groups: int = 1, bias: bool = True, dilation: int = 1) -> nn.Module:
    """A plain convolution with 'same' padding by default."""
    if padding is None:
        ks = [kernel_size] * spatial_dims if isinstance(kernel_size, int) else list(kernel_size)
        padding = tuple((k - 1) // 2 * dilation for k in ks)
    return _CONV[spatial_dims](in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups,
                               bias=bias, dilation=dilation)


def conv_transpose(spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int = 2, stride: int = 2,
                   bias: bool = True) -> nn.Module:
    return _CONVT[spatial_dims](in_ch, out_ch, kernel_size, stride=stride, bias=bias)


def max_pool(spatial_dims: int, kernel_size: int = 2) -> nn.Module:
    return _MAXPOOL[spatial_dims](kernel_size)


def dropout(spatial_dims: int, p: float) -> nn.Module:
    return _DROPOUT[spatial_dims](p) if p > 0 else nn.Identity()


class _TraceableInstanceNorm:
    """Instance norm (input statistics) that traces without converting sizes to Python numbers, and exports
    to ONNX as group norm with one group per channel (written as the same ``InstanceNormalization`` node)."""

    num_features: int
    weight: Any
    bias: Any
    eps: float
    track_running_stats: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() and not self.track_running_stats:
            if torch.onnx.is_in_onnx_export():
                return torch.group_norm(x, self.num_features, self.weight, self.bias, self.eps,
                                        torch.backends.cudnn.enabled)
            return torch.instance_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps,
                                       torch.backends.cudnn.enabled)
        return super().forward(x)  # type: ignore[misc]


class InstanceNorm1d(_TraceableInstanceNorm, nn.InstanceNorm1d):
    pass


class InstanceNorm2d(_TraceableInstanceNorm, nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_TraceableInstanceNorm, nn.InstanceNorm3d):
    pass


_INSTANCE = {1: InstanceNorm1d, 2: InstanceNorm2d, 3: InstanceNorm3d}


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` that skips its Python-side size check while tracing (which would turn a traced
    size into a Python bool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                    torch.backends.cudnn.enabled)
        return super().forward(x)


def norm_layer(norm: LayerSpec, spatial_dims: int, channels: int) -> nn.Module:
    if norm is None or norm == "none":
        return nn.Identity()
    spec = _spec(norm)
    name, kwargs = (spec[0], dict(spec[1])) if isinstance(spec, tuple) and len(spec) == 2 else (spec, {})
    if isinstance(name, str) and name.lower() == "instance":
        kwargs.setdefault("num_features", channels)
        return _INSTANCE[spatial_dims](**kwargs)
    if isinstance(name, str) and name.lower() == "group":
        kwargs.setdefault("num_channels", channels)
        return GroupNorm(**kwargs)
    return get_norm_layer(spec, spatial_dims=spatial_dims, channels=channels)


def is_norm(norm: LayerSpec) -> bool:
    """Whether ``norm`` names a normalisation (not ``None``/``"none"``)."""
    return norm not in (None, "none")


def act_layer(act: LayerSpec, channels: int | None = None) -> nn.Module:
    """An activation; ``"prelu"`` gets one learned slope per channel (as in V-Net) when ``channels`` is given."""
    if act is None or act == "none":
        return nn.Identity()
    spec = _spec(act)
    if spec == "prelu" and channels is not None:
        return nn.PReLU(channels)
    return get_act_layer(spec)


def upsample(spatial_dims: int, in_ch: int, out_ch: int, mode: str = "transpose", scale: int = 2) -> nn.Module:
    """Up-sampling by ``scale``: ``transpose`` (learned), or ``linear``/``nearest`` followed by a 1-conv when
    the channel count changes. ``linear`` is bilinear in 2D and trilinear in 3D."""
    if mode in ("transpose", "deconv"):
        return conv_transpose(spatial_dims, in_ch, out_ch, kernel_size=scale, stride=scale)
    if mode not in ("linear", "nearest"):
        raise ValueError(f"upsample mode must be 'transpose', 'linear' or 'nearest', got {mode!r}")
    interp = {"nearest": "nearest", "linear": {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]}[mode]
    layers: list[nn.Module] = [nn.Upsample(scale_factor=scale, mode=interp,
                                           align_corners=False if mode == "linear" else None)]
    if in_ch != out_ch:
        layers.append(conv(spatial_dims, in_ch, out_ch, kernel_size=1))
    return nn.Sequential(*layers)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> (dropout) -> act, the unit most of the U-shaped family is stacked from."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int | Sequence[int] = 3,
                 stride: int = 1, norm: LayerSpec = "instance", act: LayerSpec = "relu", dropout_p: float = 0.0,
                 bias: bool | None = None):
        has_norm = is_norm(norm)
        super().__init__(
            conv(spatial_dims, in_ch, out_ch, kernel_size, stride=stride, bias=(not has_norm) if bias is None else bias),
            norm_layer(norm, spatial_dims, out_ch),
            dropout(spatial_dims, dropout_p),
            act_layer(act, out_ch),
        )


class StackedConvs(nn.Sequential):
    """``n`` ConvNormAct units; the first maps ``in_ch`` to ``out_ch`` (and may be strided)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, n: int = 2, kernel_size: int = 3,
                 first_stride: int = 1, norm: LayerSpec = "instance", act: LayerSpec = "relu",
                 mid_ch: int | None = None, dropout_p: float = 0.0):
        mid = out_ch if mid_ch is None else mid_ch
        chans = [in_ch] + [mid] * (n - 1) + [out_ch]
        super().__init__(*[
            ConvNormAct(spatial_dims, chans[i], chans[i + 1], kernel_size, stride=first_stride if i == 0 else 1,
                        norm=norm, act=act, dropout_p=dropout_p)
            for i in range(n)
        ])


class PreActResidualBlock(nn.Module):
    """Pre-activation residual block (norm -> act -> conv, twice, plus identity), as in Myronenko 2018."""

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 3,
                 norm: LayerSpec = ("group", {"num_groups": 8}), act: LayerSpec = "relu"):
        super().__init__()
        self.body = nn.Sequential(
            norm_layer(norm, spatial_dims, channels), act_layer(act, channels),
            conv(spatial_dims, channels, channels, kernel_size, bias=False),
            norm_layer(norm, spatial_dims, channels), act_layer(act, channels),
            conv(spatial_dims, channels, channels, kernel_size, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
