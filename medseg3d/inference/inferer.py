"""The one place where a network meets a whole (preprocessed) volume: used by validation during training and
by the Segmenter, so both see the same predictions."""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference

from ..config import Config
from ..models import main_output


def predict_logits(model: torch.nn.Module, image: torch.Tensor, cfg: Config,
                   device: torch.device | str = "cpu", out_device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits (N, C, *spatial) for a batch of preprocessed volumes (N, C_in, *spatial) by a MONAI sliding
    window over ``train.patch_size`` windows with the config's overlap and blending. Windows run on
    ``device``; the stitched result is accumulated on ``out_device``. A 2D model (``model.spatial_dims: 2``)
    runs slice by slice (:mod:`medseg3d.inference.slices`)."""
    if cfg.model.spatial_dims == 2:
        from .slices import predict_logits_slices

        return predict_logits_slices(model, image, cfg, device, out_device)
    inf = cfg.infer

    def net(x: torch.Tensor) -> torch.Tensor:
        return main_output(model(x))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return sliding_window_inference(image.to(device), cfg.train.patch_size, inf.sw_batch_size, net,
                                            overlap=inf.overlap, mode=inf.blend, sw_device=device,
                                            device=out_device)
    finally:
        model.train(was_training)
