"""FCN-32s/16s/8s (Long 2015): parameter counts from VGG-16's, bilinear upsampling, zero-initialised skip
scores, a blob to learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg3d.models.fcn import FCN, BilinearUpsample
from model_cases import conv_p, learn, meta_params


def test_fcn_parameter_counts():
    # VGG-16 convs on RGB: 14,714,688 (the well-known count of torchvision's vgg16().features)
    sd, vgg, cin = 2, 0, 3
    for n_conv, c in ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)):
        for _ in range(n_conv):
            vgg += conv_p(cin, c, 3, sd)
            cin = c
    assert vgg == 14_714_688
    fc = conv_p(512, 4096, 7, sd) + conv_p(4096, 4096, 1, sd)  # fc6, fc7 as convolutions
    score = conv_p(4096, 21, 1, sd)
    up2 = 21 * 21 * 4 * 4  # learned ×2 deconvolution, no bias (FCN's upscore2)
    assert meta_params(FCN, variant="32s") == vgg + fc + score == 134_346_581
    assert meta_params(FCN, variant="16s") == vgg + fc + score + conv_p(512, 21, 1, sd) + up2
    assert meta_params(FCN) == vgg + fc + score + conv_p(512, 21, 1, sd) + conv_p(256, 21, 1, sd) + 2 * up2
    assert meta_params(FCN) == 134_376_863
    # a learned final ×8 upsampling adds a full 21→21 16×16 kernel
    assert meta_params(FCN, learn_final_upsample=True) == 134_376_863 + 21 * 21 * 16 * 16


@pytest.mark.parametrize("sd", [2, 3])
def test_fcn_bilinear_upsampling_matches_interpolation(sd):
    x = torch.randn((1, 3) + (6,) * sd)
    ref = F.interpolate(x, scale_factor=8, mode="bilinear" if sd == 2 else "trilinear", align_corners=False)
    inner = (slice(None), slice(None)) + (slice(8, 40),) * sd  # away from the zero-padded border
    for learned in (False, True):
        y = BilinearUpsample(sd, 3, 8, learned=learned)(x)
        assert y.shape == ref.shape
        assert torch.allclose(y[inner], ref[inner], atol=1e-5)


def test_fcn_skip_scores_start_at_zero():
    net = FCN(2, 1, 2, base_filters=4)
    assert net.score_pool4.weight.abs().sum() == 0 and net.score_pool3.weight.abs().sum() == 0
    assert FCN(2, 1, 2, base_filters=4, variant="32s").score_pool4 is None


def test_learns_a_blob_2d():
    # stride-8 scores need a larger image for a smooth enough ball outline
    assert learn("fcn", 2, (64, 64), 150, dropout=0.0) > 0.9


@pytest.mark.slow
def test_learns_a_blob_3d():
    # FCN-8s scores live on an 8-voxel grid and reach full resolution by fixed trilinear upsampling: a ball of
    # radius 5-8 voxels cannot be outlined to Dice 0.9 that way (0.83 after 400 steps; in 2D a 64² image reaches
    # > 0.9).
    assert learn("fcn", 3, (32, 32, 32), 400, batch=2, dropout=0.0, base_filters=4) > 0.8
