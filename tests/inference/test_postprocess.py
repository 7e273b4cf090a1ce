"""Postprocessing steps on constructed label maps, the config section, and the GPU-stitching fallback."""

import numpy as np
import pytest
import torch
from helpers import phantom, segmenter

from medseg3d.config import PostprocessConfig, load_config
from medseg3d.errors import MedsegError
from medseg3d.inference import predictor as inferer
from medseg3d.inference.postprocess import postprocess

NAMES = {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}


def labels_with_blobs():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:10, 2:10, 2:10] = 2          # big edema blob (512 voxels) ...
    lab[5:7, 5:7, 5:7] = 0             # ... with an enclosed hole of 8 voxels
    lab[15:17, 15:17, 15:17] = 2       # small edema blob (8 voxels)
    lab[12:14, 2:4, 2:4] = 4           # enhancing (8 voxels)
    return lab


def test_steps_each_on_a_constructed_map():
    lab = labels_with_blobs()
    mm3 = 125.0  # 5 mm voxels: 8 voxels = 1 ml

    out = postprocess(lab, PostprocessConfig(), NAMES, mm3)
    np.testing.assert_array_equal(out, lab)  # defaults: off

    out = postprocess(lab, PostprocessConfig(min_component_ml=1.5), NAMES, mm3)
    assert (out[15:17, 15:17, 15:17] == 0).all() and (out[12:14, 2:4, 2:4] == 0).all()
    assert (out == 2).sum() == (lab == 2).sum() - 8

    out = postprocess(lab, PostprocessConfig(largest_component=True), NAMES, mm3)
    assert (out[15:17, 15:17, 15:17] == 0).all() and (out == 4).sum() == 8  # the only enhancing blob stays

    out = postprocess(lab, PostprocessConfig(fill_holes=True), NAMES, mm3)
    assert (out[5:7, 5:7, 5:7] == 2).all() and (out == 2).sum() == (lab == 2).sum() + 8

    relabel = {"source": "enhancing", "target": "necrotic", "below_ml": 1.5}
    out = postprocess(lab, PostprocessConfig(relabel=relabel), NAMES, mm3)
    assert (out == 4).sum() == 0 and (out == 1).sum() == 8
    out = postprocess(lab, PostprocessConfig(relabel={**relabel, "below_ml": 0.5}), NAMES, mm3)
    np.testing.assert_array_equal(out, lab)  # 1 ml of enhancing is not below 0.5 ml

    with pytest.raises(MedsegError, match="unknown class 'tumor'"):
        postprocess(lab, PostprocessConfig(relabel={**relabel, "source": "tumor"}), NAMES, mm3)


def test_postprocess_config_section_is_strict():
    cfg = load_config({"data": {"root": "."}, "postprocess": {"fill_holes": True, "min_component_ml": 0.2}})
    assert cfg.postprocess.fill_holes and not cfg.postprocess.largest_component
    with pytest.raises(MedsegError, match="did you mean 'postprocess.fill_holes'"):
        load_config({"data": {"root": "."}, "postprocess": {"fill_hole": True}})


class OomOnce(torch.nn.Module):
    """Raises CUDA's out-of-memory error on its first call (as stitching a large volume on a GPU would)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(x)


def test_gpu_out_of_memory_falls_back_to_cpu_stitching():
    seg = segmenter(spacing=None)
    model, cfg = seg.members[0].model, seg.config
    x = torch.from_numpy(phantom((30, 26, 12)))[None, None]
    expected = inferer.predict_logits(model, x, cfg)
    wrapped = OomOnce(model)
    with pytest.warns(RuntimeWarning, match="volume does not fit in GPU memory; stitching on the CPU"):
        got = inferer.predict_logits(wrapped, x, cfg, device="cpu", out_device="cuda")
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, expected)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # already stitching on the CPU: nothing to fall back to
        inferer.predict_logits(OomOnce(model), x, cfg, device="cpu", out_device="cpu")
