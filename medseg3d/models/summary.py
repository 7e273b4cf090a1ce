"""A table of the registered networks: dimensions, parameters, forward GFLOPs and paper.

Every net is built with its paper defaults. Nets that support 3D are measured in 3D with 4 input and 4 output
channels (BraTS-like: T1, T1c, T2, FLAIR → 4 labels) on a ``1×4×128³`` input; 2D-only nets with 1 input and
2 output channels on a ``1×1×256²`` input (``spatial_dims_filter=2`` measures every 2D-capable net that way).

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products,
2 FLOPs per multiply-add) while the net runs in eval mode on the ``meta`` device, so no real arithmetic is done
and the whole table takes a few seconds. Should an op not run on ``meta``, the net is run for real on the CPU
at a small size and the count is scaled by the ratio of voxels (exact for convolutional nets up to padding).
A net whose constructor asks for the input size (``input_image_size`` of segresnet_vae) is built for the
measured input, so its parameter count is the one for that patch (not the paper's 160×192×128 crop).

Below a net's row come its named variants (the class attribute ``variants``: e.g. V-Net's released Caffe model,
UNet++ with the authors' units, the 5-level 3D U²-Net), each measured the same way with its keyword arguments.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..registry import MODELS

#: (in_channels, out_channels, spatial size) used per spatial_dims
SETTINGS: dict[int, tuple[int, int, int]] = {3: (4, 4, 128), 2: (1, 2, 256)}
_FALLBACK_SIZE = {3: 32, 2: 64}


def _dims_label(dims: tuple[int, ...]) -> str:
    return "/".join(f"{d}D" for d in sorted(dims))


#: constructor arguments that some nets need and that follow from the input size (e.g. the VAE branch of
#: segresnet_vae has dense layers sized by the training patch); given the measured input's spatial size
_SIZE_ARGS = ("input_image_size", "img_size", "image_size", "input_size", "patch_size")


def build_kwargs(cls: Any, spatial_dims: int, size: int) -> dict[str, Any]:
    """Keyword arguments a net needs beyond (spatial_dims, in, out): the input size where it asks for one."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}
    return {n: (size,) * spatial_dims for n in _SIZE_ARGS if n in params}


def _count_flops(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    x = torch.zeros(shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def measure(cls: type, spatial_dims: int, size: int | None = None, **extra: Any) -> dict[str, Any]:
    """Parameters and forward GFLOPs of ``cls`` with its defaults (and the keyword arguments ``extra``) at
    ``spatial_dims`` (see :data:`SETTINGS`)."""
    cin, cout, default_size = SETTINGS[spatial_dims]
    size = default_size if size is None else size
    shape = (1, cin) + (size,) * spatial_dims
    row: dict[str, Any] = {
        "spatial_dims": spatial_dims, "in_channels": cin, "out_channels": cout,
        "input": "×".join(map(str, shape[:2])) + "×" + (f"{size}³" if spatial_dims == 3 else f"{size}²"),
    }
    kwargs = {**build_kwargs(cls, spatial_dims, size), **extra}
    if kwargs:
        row["kwargs"] = kwargs
    meta = torch.device("meta")
    try:
        with meta:
            model = cls(spatial_dims, cin, cout, **kwargs)
        model.eval()
        row["parameters"] = sum(p.numel() for p in model.parameters())
        row["gflops"] = _count_flops(model, shape, meta) / 1e9
        row["flops_method"] = "meta"
        return row
    except Exception:  # noqa: BLE001 - any failure on meta: fall back to a small real run
        pass
    model = cls(spatial_dims, cin, cout, **kwargs).eval()
    row["parameters"] = sum(p.numel() for p in model.parameters())
    divisor = getattr(model, "divisor", 1)
    div = max(divisor) if isinstance(divisor, (tuple, list)) else int(divisor)
    small = max(_FALLBACK_SIZE[spatial_dims], div)
    small = int(math.ceil(small / div) * div)
    small = min(small, size)
    flops = _count_flops(model, (1, cin) + (small,) * spatial_dims, torch.device("cpu"))
    row["gflops"] = flops * (size / small) ** spatial_dims / 1e9
    row["flops_method"] = f"cpu {small}^{spatial_dims}, scaled"
    return row


def model_table(spatial_dims_filter: int | None = None, *, size: int | None = None,
                variants: bool = True) -> list[dict[str, Any]]:
    """One row per registered net: ``name, dims, spatial_dims, in_channels, out_channels, input, parameters,
    gflops, flops_method, paper`` (``kwargs`` when the net is built with keyword arguments: the input size it
    needs, a variant's; and ``error`` when it could not be built), followed, when ``variants`` is true, by a
    row per named variant of the net (``variant``: its name).

    ``spatial_dims_filter`` (2 or 3) keeps the nets that support those dims and measures them there; ``None``
    measures each net in 3D when it supports 3D, else in 2D. ``size`` overrides the spatial edge length
    (default 128 for 3D, 256 for 2D).
    """
    if spatial_dims_filter not in (None, 2, 3):
        raise ValueError(f"spatial_dims_filter must be None, 2 or 3, got {spatial_dims_filter!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive integer, got {size!r}")
    rows = []
    for name, cls in MODELS.items():
        dims = tuple(getattr(cls, "dims", (2, 3)))
        if spatial_dims_filter is not None and spatial_dims_filter not in dims:
            continue
        sd = spatial_dims_filter or (3 if 3 in dims else 2)
        named = [(None, {})] + (list(getattr(cls, "variants", {}).items()) if variants else [])
        for label, extra in named:
            row: dict[str, Any] = {"name": name, "class": cls.__name__, "dims": _dims_label(dims)}
            if label is not None:
                row["variant"] = label
            try:
                row.update(measure(cls, sd, size, **extra))
            except Exception as exc:  # noqa: BLE001 - report, don't hide the other nets
                row.update({"spatial_dims": sd, "parameters": None, "gflops": None,
                            "error": f"{type(exc).__name__}: {exc}"})
            row["paper"] = getattr(cls, "paper", "")
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`model_table` rows."""
    lines = ["| model | dims | measured as | parameters | GFLOPs / forward | input | paper |",
             "|---|---|---|---:|---:|---|---|"]
    for r in rows:
        model = f"{r['name']} ({r['variant']}: {_kw(r.get('kwargs', {}))})" if r.get("variant") else r["name"]
        if r.get("error"):
            lines.append(f"| {model} | {r['dims']} | {r.get('spatial_dims', '')}D | error | error | "
                         f"{r['error']} | {r.get('paper', '')} |")
            continue
        io = f"{r['spatial_dims']}D, {r['in_channels']} in / {r['out_channels']} out"
        params = f"{r['parameters']:,} ({r['parameters'] / 1e6:.2f} M)"
        lines.append(f"| {model} | {r['dims']} | {io} | {params} | {r['gflops']:.1f} | {r['input']} | "
                     f"{r['paper']} |")
    return "\n".join(lines)


def _kw(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in _SIZE_ARGS)


__all__ = ["model_table", "format_table", "measure", "SETTINGS"]
