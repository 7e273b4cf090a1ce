"""The shared parts: encoder and decoder, padding to the divisor, traceable norms, and checkpoints written
before the nets were built from the shared parts (their weights load and give the same logits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medseg3d.models import LEGACY_DEFAULTS, MODELS
from medseg3d.models.base import crop_to, pad_to_divisor
from medseg3d.models.blocks import GroupNorm, InstanceNorm3d, StackedConvs, norm_layer, upsample
from medseg3d.models.parts import Decoder, Encoder
from medseg3d.models.unet import UNet

FIXTURES = Path(__file__).parent / "fixtures"


def convs(i, cin, cout):
    return StackedConvs(2, cin, cout, n=1, norm=None)


def test_encoder_stages_and_channels():
    enc = Encoder(2, 3, [4, 8, 16], convs)
    assert enc.channels == [4, 8, 16] and enc.strides == [1, 2, 2]
    feats = enc(torch.randn(2, 3, 16, 12))
    assert [tuple(f.shape) for f in feats] == [(2, 4, 16, 12), (2, 8, 8, 6), (2, 16, 4, 3)]
    # a down-sampling factory maps to the stage's channels; the block then keeps them
    calls = []

    def block(i, cin, cout):
        calls.append(("block", i, cin, cout))
        return convs(i, cin, cout)

    def down(i, cin, cout):
        calls.append(("down", i, cin, cout))
        return nn.Conv2d(cin, cout, 2, stride=2)

    strided = Encoder(2, 3, [4, 8], block, down=down)
    assert calls == [("block", 0, 3, 4), ("down", 1, 4, 8), ("block", 1, 8, 8)]
    assert strided(torch.randn(1, 3, 8, 8))[1].shape == (1, 8, 4, 4)
    with pytest.raises(ValueError, match="down"):
        Encoder(2, 3, [4, 8], convs, down="avg")
    with pytest.raises(ValueError, match="2 stages"):
        Encoder(2, 3, [4], convs)


def test_decoder_is_built_from_the_encoder():
    enc = Encoder(2, 1, [4, 8, 16], convs)
    seen = []

    def up(i, cin, cout):
        seen.append(("up", i, cin, cout))
        return upsample(2, cin, cout)

    def block(i, cin, cout):
        seen.append(("block", i, cin, cout))
        return convs(i, cin, cout)

    dec = Decoder(enc, up, block)  # DNA's rule: up-conv to the skip's channels, concatenate, back to them
    assert seen == [("up", 1, 16, 8), ("block", 1, 16, 8), ("up", 0, 8, 4), ("block", 0, 8, 4)]
    assert dec.out_channels == [4, 8]
    x = torch.randn(2, 1, 16, 16)
    outs = dec(enc(x), levels=2)
    assert [tuple(o.shape) for o in outs] == [(2, 4, 16, 16), (2, 8, 8, 8)]  # full resolution first
    assert torch.equal(dec(enc(x))[0], outs[0])

    seen.clear()
    Decoder(enc, up, block, up_channels="below", stage_channels=[5, 7])
    assert seen == [("up", 1, 16, 16), ("block", 1, 24, 7), ("up", 0, 7, 7), ("block", 0, 11, 5)]
    seen.clear()
    added = Decoder(enc, up, block, merge="add")
    assert seen[1] == ("block", 1, 8, 8)
    assert added(enc(x))[0].shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="merge"):
        Decoder(enc, up, block, merge="max")
    with pytest.raises(ValueError, match="up_channels"):
        Decoder(enc, up, block, merge="add", up_channels="below")
    with pytest.raises(ValueError, match="skip_channels"):
        Decoder(enc, up, block, skip_channels=[4])


def test_no_skip_decoder_reads_only_the_bottleneck():
    enc = Encoder(2, 1, [4, 8], convs)
    dec = Decoder(enc, lambda i, cin, cout: upsample(2, cin, cout), convs, merge="none")
    bottom = torch.randn(1, 8, 4, 4)
    assert dec([None, bottom])[0].shape == (1, 4, 8, 8)


def test_context_reaches_every_block():
    class Tagged(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 1)
            self.seen = []

        def forward(self, x, domain):
            self.seen.append(domain)
            return self.conv(x)

    class TaggedPool(Tagged):
        def forward(self, x, domain):
            self.seen.append(domain)
            return nn.functional.max_pool2d(self.conv(x), 2)

    enc = Encoder(2, 1, [2, 4], lambda i, cin, cout: Tagged(cin, cout),
                  down=lambda i, cin, cout: TaggedPool(cin, cout))
    dec = Decoder(enc, lambda i, cin, cout: nn.Sequential(), lambda i, cin, cout: Tagged(cin, cout),
                  up_channels="below")
    dec.ups[0] = _Up2()
    dec(enc(torch.randn(1, 1, 8, 8), "liver"), "liver")
    assert all(m.seen == ["liver"] for m in list(enc.modules()) + list(dec.modules()) if isinstance(m, Tagged))


class _Up2(nn.Module):
    def forward(self, x, domain):
        return nn.functional.interpolate(x, scale_factor=2.0)


def test_pad_to_divisor_and_crop():
    x = torch.randn(1, 2, 16, 24)
    same, size = pad_to_divisor(x, 8)
    assert same is x and size == [16, 24]  # nothing to pad: no copy
    y, size = pad_to_divisor(torch.randn(1, 2, 13, 17), (4, 8))
    assert y.shape == (1, 2, 16, 24) and size == [13, 17]
    assert torch.equal(y[:, :, 13:], torch.zeros(1, 2, 3, 24))  # padded at the far end
    assert crop_to(y, size).shape == (1, 2, 13, 17)
    assert crop_to(x, [16, 24]) is x


def test_traceable_norms_are_the_usual_modules():
    inorm = norm_layer(("instance", {"affine": True}), 3, 6)
    assert isinstance(inorm, InstanceNorm3d) and isinstance(inorm, nn.InstanceNorm3d)
    assert set(inorm.state_dict()) == {"weight", "bias"}
    assert not norm_layer("instance", 3, 6).affine  # MONAI's default: not affine
    gnorm = norm_layer(("group", {"num_groups": 2}), 3, 6)
    assert isinstance(gnorm, GroupNorm) and gnorm.num_groups == 2 and gnorm.num_channels == 6
    x = torch.randn(2, 6, 5, 4, 3)
    for norm, ref in ((inorm, nn.functional.instance_norm(x, weight=inorm.weight, bias=inorm.bias)),
                      (gnorm, nn.functional.group_norm(x, 2, gnorm.weight, gnorm.bias))):
        with torch.no_grad():
            traced = torch.jit.trace(norm, x)
            assert torch.equal(norm(x), ref) and torch.allclose(traced(x), ref, atol=1e-6)


# ------------------------------------------------------------------------------- checkpoints from before
def _legacy():
    return torch.load(FIXTURES / "legacy_nets.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(_legacy()))
def test_weights_from_before_the_shared_parts_load_and_give_the_same_logits(name):
    case = _legacy()[name]
    kwargs = {**LEGACY_DEFAULTS.get(name, {}), **case["kwargs"]}
    net = MODELS.get(name)(case["spatial_dims"], case["in_channels"], case["out_channels"], **kwargs).eval()
    state, offset = {}, 0
    for key, shape, dtype in zip(case["keys"], case["shapes"], case["dtypes"]):
        n = int(torch.Size(shape).numel())
        state[key] = case["flat"][offset:offset + n].reshape(shape).to(getattr(torch, dtype))
        offset += n
    assert set(state) - set(net.state_dict()), "the fixture should hold the old key names"
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.allclose(net(case["input"]), case["output"], atol=1e-5)


def test_the_version_1_checkpoint_loads():
    ckpt = torch.load(Path(__file__).parents[1] / "fixtures" / "checkpoint_v1.pt", weights_only=True)
    params = ckpt["config"]["model"]["params"]
    net = UNet(3, len(ckpt["channels"]), len(ckpt["regions"] or ckpt["labels"]), **params)
    net.load_state_dict(ckpt["model"], strict=True)
    assert torch.equal(net.encoder.blocks[0][0][0].weight, ckpt["model"]["down.0.0.0.weight"])
