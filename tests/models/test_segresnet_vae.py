"""The AE-regularised net (Myronenko 2018): patch size in training, parameter count layer by layer and MONAI's
SegResNet/SegResNetVAE side by side, a blob to learn with the paper's loss."""

from __future__ import annotations

import pytest
import torch

from medseg3d.models.segresnet_vae import SegResNetVAE
from model_cases import conv_p, learn, meta_params, small


def test_any_size_in_eval_but_the_patch_size_in_training():
    net = small("segresnet_vae", 3)  # patch 48×48×32
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 20, 70, 9)).shape == (1, 2, 20, 70, 9)
    net.train()
    with pytest.raises(ValueError, match="input_image_size"):
        net(torch.randn(1, 1, 64, 48, 32))
    assert net(torch.randn(1, 1, 64, 48, 32), vae=False).shape == (1, 2, 64, 48, 32)
    with torch.no_grad():
        out = net(torch.randn(2, 1, 37, 41, 29))  # padded to the patch size
    assert out["seg"].shape == (2, 2, 37, 41, 29) and out["recon"].shape == (2, 1, 37, 41, 29)
    assert net(torch.randn(2, 1, 37, 41, 29), vae=False).shape == (2, 2, 37, 41, 29)


def test_parameter_count_and_monai_side_by_side():
    from monai.networks.nets import SegResNet, SegResNetVAE as MonaiVAE

    size = (160, 192, 128)
    ours = meta_params(SegResNetVAE, 3, 4, 3, input_image_size=size)

    def block(c):  # GN, ReLU, conv, GN, ReLU, conv
        return 2 * (2 * c + conv_p(c, c, 3, 3, bias=False))

    seg = conv_p(4, 32, 3, 3, False) + block(32)
    for i, nb in zip(range(1, 4), (2, 2, 4)):
        c = 32 * 2 ** i
        seg += conv_p(c // 2, c, 3, 3, False) + nb * block(c)
    up = sum(conv_p(2 * c, c, 1, 3, False) + block(c) for c in (128, 64, 32))
    seg += up + conv_p(32, 3, 1, 3)
    flat = 16 * (160 // 16) * (192 // 16) * (128 // 16)
    vae = 2 * 256 + conv_p(256, 16, 3, 3) + (flat * 256 + 256) + (128 * flat + flat) + conv_p(16, 256, 1, 3, False)
    vae += up + conv_p(32, 4, 1, 3)  # own decoder (no skips), 1³ conv to the 4 input channels
    assert ours == seg + vae == 26_032_887

    # MONAI's segmentation path = ours + the GN(32) it puts before the 1³ head
    assert meta_params(SegResNet, init_filters=32, in_channels=4, out_channels=3) == seg + 2 * 32
    # MONAI's VAE: shares the seg decoder (no `up` copy), two 15360→256 dense layers (mean, σ) instead of one
    # 15360→256 layer split 128/128, a 256→15360 decoding dense layer (ours 128→15360), and GN after the VD
    # conv (16), after the VU upsampling (256) and before the reconstruction conv (32).
    monai = meta_params(MonaiVAE, size, init_filters=32, in_channels=4, out_channels=3)
    monai_vae = (2 * 256 + conv_p(256, 16, 3, 3) + 2 * 16 + 2 * (flat * 256 + 256) + (256 * flat + flat)
                 + conv_p(16, 256, 1, 3, False) + 2 * 256 + 2 * 32 + conv_p(32, 4, 1, 3))
    assert monai == seg + 2 * 32 + monai_vae == 30_726_935
    assert monai - ours == 4_694_048

    # same segmentation output shape on the same input; MONAI also returns its VAE loss in training
    small_ours = SegResNetVAE(3, 1, 2, input_image_size=(32, 32, 32), base_filters=8)
    small_monai = MonaiVAE((32, 32, 32), init_filters=8, in_channels=1, out_channels=2)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert small_monai.eval()(x)[0].shape == small_ours.eval()(x).shape == (1, 2, 32, 32, 32)
        seg_m, vae_loss = small_monai.train()(x)
        out = small_ours.train()(x)
    assert seg_m.shape == out["seg"].shape and vae_loss.dim() == 0 and out["recon"].shape == x.shape


def test_vae_decoder_mirrors_the_decoder_without_skips():
    net = SegResNetVAE(3, 4, 3, input_image_size=(32, 32, 32), base_filters=8)
    assert net.vae_decoder.merge == "none" and net.decoder.merge == "add"
    assert net.vae_decoder.out_channels == net.decoder.out_channels == [8, 16, 32]
    seg_keys = {k for k, _ in net.decoder.named_parameters()}
    assert seg_keys == {k for k, _ in net.vae_decoder.named_parameters()}  # same structure, own weights
    assert net.vae_decoder.blocks[0][0].body[2].weight is not net.decoder.blocks[0][0].body[2].weight


def test_learns_a_blob_2d():
    assert learn("segresnet_vae", 2, (32, 32), 60) > 0.9


@pytest.mark.slow
def test_learns_a_blob_3d():
    assert learn("segresnet_vae", 3, (24, 24, 24), 120, batch=2, lr=1e-3) > 0.9
