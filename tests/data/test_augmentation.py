"""3D spatial augmentation (``RandSpatialToPatchd``): one resampling of the sampled region down to the patch, a
plain centre crop when nothing fires, and an elastic field computed on a coarse grid whose spread matches
MONAI's full-resolution field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from monai.networks.layers import GaussianFilter

from medseg3d.data.transforms import ELASTIC_COARSE, RandSpatialToPatchd

PATCH = [32, 32, 32]


def ball(shape=(48, 48, 48), r=12.0):
    """(image (1, ...), label (1, ...)): a smooth ball and its mask at the same place."""
    g = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
    dist = np.sqrt((g ** 2).sum(0))
    image = np.clip(r + 0.5 - dist, 0, 1).astype(np.float32)  # 1 inside, a one-voxel ramp at the surface
    return MetaTensor(torch.from_numpy(image[None])), MetaTensor(torch.from_numpy((dist <= r).astype(np.float32)[None]))


def make(rotate=0.0, elastic=0.0, sigma=(9.0, 9.0), magnitude=(300.0, 300.0), seed=0):
    t = RandSpatialToPatchd(["image", "label"], PATCH, rotate, rotate, 0.26, 0.15, elastic, sigma, magnitude)
    return t.set_random_state(seed)


def test_nothing_fires_gives_the_exact_centre_crop():
    """A region 15 voxels larger than the patch: an identity grid would sample half-way between voxels."""
    image, label = ball((47, 47, 47))
    out = make()({"image": image, "label": label})
    assert torch.equal(torch.as_tensor(out["image"]), image[:, 7:39, 7:39, 7:39])
    assert torch.equal(torch.as_tensor(out["label"]), label[:, 7:39, 7:39, 7:39])
    monai = mt.RandAffined(["image"], prob=0.0, spatial_size=PATCH, rotate_range=[0.26] * 3)({"image": image})
    assert not torch.equal(torch.as_tensor(monai["image"]), image[:, 7:39, 7:39, 7:39])  # what it replaces


@pytest.mark.parametrize("rotate,elastic", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_image_and_label_move_together(rotate, elastic):
    """Whatever fires, the label is still the thresholded image (the same grid for both), and the patch
    changed."""
    image, label = ball()
    out = make(rotate, elastic)({"image": image, "label": label})
    img, lab = torch.as_tensor(out["image"])[0], torch.as_tensor(out["label"])[0]
    assert img.shape == lab.shape == tuple(PATCH)
    assert set(torch.unique(lab).tolist()) <= {0.0, 1.0}
    agree = ((img > 0.5) == (lab > 0.5)).float().mean().item()
    assert agree > 0.98, agree
    assert not torch.equal(lab, label[0, 8:40, 8:40, 8:40])


def test_the_same_seed_gives_the_same_patch_and_another_seed_another():
    image, label = ball()
    a = make(1.0, 1.0, seed=3)({"image": image, "label": label})["image"]
    b = make(1.0, 1.0, seed=3)({"image": image, "label": label})["image"]
    c = make(1.0, 1.0, seed=4)({"image": image, "label": label})["image"]
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)) and not torch.equal(torch.as_tensor(a), torch.as_tensor(c))


def test_the_coarse_field_spreads_like_monais_full_resolution_field():
    """Same sigma and magnitude: the displacement's standard deviation and smoothness (the correlation of
    neighbours 4 voxels apart) match MONAI's field (uniform noise on the patch grid, Gaussian-smoothed)."""
    sigma, magnitude = 10.0, 500.0
    t = make(0.0, 1.0, sigma=(sigma, sigma), magnitude=(magnitude, magnitude))
    ours = torch.stack([t.elastic_field(t.elastic) for _ in range(6)])
    rng = np.random.RandomState(0)
    smooth = GaussianFilter(spatial_dims=3, sigma=sigma, truncated=3.0)
    theirs = torch.stack([smooth(torch.as_tensor(rng.uniform(-1, 1, [1, 3] + PATCH).astype(np.float32)))[0] * magnitude
                          for _ in range(6)])

    def lag_corr(f, lag=4):
        a, b = f[..., :-lag, :, :].flatten(), f[..., lag:, :, :].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    ratio = float(ours.std() / theirs.std())
    assert 0.8 < ratio < 1.25, ratio
    assert abs(lag_corr(ours) - lag_corr(theirs)) < 0.1, (lag_corr(ours), lag_corr(theirs))
    assert ELASTIC_COARSE > 1


def test_it_sits_in_the_3d_recipe_and_2d_keeps_monai_s_transforms():
    from medseg3d.config import load_config
    from medseg3d.data.transforms import augmentation

    aug = {"rotate_prob": 0.2, "scale_prob": 0.2, "elastic_prob": 0.2}
    cfg3 = load_config({"data": {"root": "x"}, "train": {"patch_size": PATCH, "augment": aug}})
    assert sum(isinstance(t, RandSpatialToPatchd) for t in augmentation(cfg3, 3)) == 1
    cfg2 = load_config({"data": {"root": "x"}, "model": {"spatial_dims": 2},
                        "train": {"patch_size": [32, 32], "augment": aug}})
    ts = augmentation(cfg2, 2)
    assert not any(isinstance(t, RandSpatialToPatchd) for t in ts) and any(isinstance(t, mt.RandAffined) for t in ts)
