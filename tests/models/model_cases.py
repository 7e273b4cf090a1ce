"""Small instances of every registered net and the helpers the model tests share."""

from __future__ import annotations

import ast
import io
import math
import re
from typing import Any

import torch

from medseg3d.models import MODELS

ODD3 = (37, 41, 29)
ODD2 = (37, 41)


def odd(sd: int) -> tuple[int, ...]:
    return ODD3 if sd == 3 else ODD2


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta_params(cls, *args, **kwargs) -> int:
    """Parameter count of ``cls(*args, **kwargs)`` built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return n_params(cls(*args, **kwargs))


def conv_p(cin: int, cout: int, k: int, sd: int, bias: bool = True) -> int:
    return cin * cout * k ** sd + (cout if bias else 0)


def small_kwargs(name: str, sd: int, size: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Keyword arguments of a small, fast instance of ``name``; ``size`` is the input size the net will see
    (the AE-regularised net's VAE needs its padded size)."""
    size = size or odd(sd)
    return {
        "unet": dict(base_filters=4),
        "vnet": dict(base_filters=4),
        "nonewnet": dict(base_filters=4),
        "segresnet_vae": dict(base_filters=8, input_image_size=tuple(math.ceil(s / 16) * 16 for s in size)),
        "fcn": dict(base_filters=2, fc_kernel=3) if sd == 3 else dict(base_filters=4),
        "u2net3d": dict(base_filters=4, levels=4),
        "unetpp": dict(base_filters=4),
        "multiresunet": dict(base_filters=8),
    }[name]


def small(name: str, sd: int, in_ch: int = 1, out_ch: int = 2, size: tuple[int, ...] | None = None, **extra):
    kw = small_kwargs(name, sd, size)
    kw.update(extra)
    return MODELS.get(name)(sd, in_ch, out_ch, **kw)


def dims_cases() -> list[tuple[str, int]]:
    return [(n, sd) for n in MODELS.names() for sd in MODELS.get(n).dims]


_PARAM_LINE = re.compile(r"^\s*([23])D, (\d+) in / (\d+) out(?:, (.+))?: ([\d,]+)\s*$")


def documented_counts(cls) -> list[tuple[int, int, int, dict[str, Any], int]]:
    """The parameter counts a net's docstring states, as ``(spatial_dims, in, out, kwargs, count)``: lines like
    ``3D, 1 in / 2 out, variant="caffe": 61,982,682``."""
    rows = []
    for line in (cls.__doc__ or "").splitlines():
        m = _PARAM_LINE.match(line)
        if not m:
            continue
        sd, cin, cout, kw, count = m.groups()
        call = ast.parse(f"f({kw or ''})", mode="eval").body
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        rows.append((int(sd), int(cin), int(cout), kwargs, int(count.replace(",", ""))))
    return rows


# ------------------------------------------------------------------------------------ learning tiny cases
def blobs(n: int, size: tuple[int, ...], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (N, 1, *size): a bright ball of random centre and radius in Gaussian noise, and its mask."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij")
    imgs, masks = [], []
    for _ in range(n):
        r = float(torch.empty(1).uniform_(min(size) / 6, min(size) / 4, generator=gen))
        c = [float(torch.empty(1).uniform_(r + 1, s - r - 1, generator=gen)) for s in size]
        mask = sum((g - ci) ** 2 for g, ci in zip(grids, c)) <= r * r
        imgs.append(mask.float() + 0.5 * torch.randn(size, generator=gen))
        masks.append(mask.long())
    return torch.stack(imgs)[:, None], torch.stack(masks)[:, None]


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    p, t = pred.bool(), target.bool()
    return float(2 * (p & t).sum() / (p.sum() + t.sum()).clamp(min=1))


def learn(name: str, sd: int, size: tuple[int, ...], steps: int, lr: float = 3e-3, batch: int = 4, **kw) -> float:
    """Train a small ``name`` on fresh blobs for ``steps`` Adam steps; the Dice on 8 unseen cases.

    Softmax over 2 classes with Dice + CE, except the AE-regularised net, trained as in its paper: one sigmoid
    region with the ``ae_reg`` loss (soft Dice + 0.1·L2 + 0.1·KL).
    """
    from medseg3d.engine.losses import ae_reg, dice_ce

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    extra = dict(kw)
    vae = name == "segresnet_vae"
    if vae:
        extra.setdefault("input_image_size", tuple(math.ceil(s / 16) * 16 for s in size))
    net = small(name, sd, out_ch=1 if vae else 2, **extra)
    loss_fn = ae_reg(multilabel=True) if vae else dice_ce()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        x, y = blobs(batch, size, gen)
        opt.zero_grad()
        loss_fn(net(x), y.float() if vae else y, x).backward()
        opt.step()
    net.eval()
    x, y = blobs(8, size, torch.Generator().manual_seed(123))  # unseen cases
    with torch.no_grad():
        logits = net(x)
    pred = logits > 0 if vae else logits.argmax(1, keepdim=True)
    return dice(pred, y)


def centred_blobs(n, sd, size, seed, channels=1):
    """``n`` images (N, channels, *size) of a bright ball near the centre in noise, and the masks (N, *size)."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * sd, indexing="ij")
    xs, ys = [], []
    for _ in range(n):
        c = torch.rand(sd, generator=g) * (size * 0.5) + size * 0.25
        r = float(torch.rand(1, generator=g)) * size * 0.1 + size * 0.2
        mask = (sum((gr - ci) ** 2 for gr, ci in zip(grids, c)) <= r * r).float()
        img = mask * 1.5 + 0.5 * torch.randn(channels, *mask.shape, generator=g)
        xs.append(img)
        ys.append(mask.long())
    return torch.stack(xs), torch.stack(ys)


def argmax_dice(logits, y):
    pred = logits.argmax(1)
    inter = ((pred == 1) & (y == 1)).sum().item()
    return 2 * inter / ((pred == 1).sum().item() + (y == 1).sum().item() + 1e-8)


def soft_dice_loss(logits, y):
    p = logits.softmax(1)[:, 1]
    t = (y == 1).float()
    return 1 - 2 * (p * t).sum() / (p.sum() + t.sum() + 1e-6)


def fit(m, sd, size, max_steps, forward=lambda m, x: m(x), channels=1, lr=1e-2):
    """Adam on 4 fixed centred blobs until the validation Dice (2 other blobs, checked every 5 steps) passes
    0.9: (steps, best Dice)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x, y = centred_blobs(4, sd, size, seed=1, channels=channels)
    xv, yv = centred_blobs(2, sd, size, seed=2, channels=channels)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    best = 0.0
    for step in range(1, max_steps + 1):
        m.train()
        out = forward(m, x)
        outs = out if isinstance(out, list) else [out]
        loss = sum(F.cross_entropy(o, y) + soft_dice_loss(o, y) for o in outs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0:
            m.eval()
            with torch.no_grad():
                best = max(best, argmax_dice(forward(m, xv), yv))
            if best > 0.9:
                return step, best
    return max_steps, best


def export_round_trip(m, x, **kw):
    """``torch.export`` of ``m`` in eval mode, saved and loaded back, gives the same logits."""
    m.eval()
    ep = torch.export.export(m, (x,), kwargs=kw or None)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    with torch.no_grad():
        assert torch.allclose(loaded(x, **kw), m(x, **kw), atol=1e-5)
