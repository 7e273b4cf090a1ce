"""The one place where a network meets a whole (preprocessed) volume: used by validation during training and
by the Segmenter, so both see the same predictions."""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference

from ..config import Config
from ..models import main_output


def predict_logits(model: torch.nn.Module, image: torch.Tensor, cfg: Config,
                   device: torch.device | str = "cpu", out_device: torch.device | str = "cpu",
                   domain: str | None = None) -> torch.Tensor:
    """Logits (N, C, *spatial) for a batch of preprocessed volumes (N, C_in, *spatial) by a MONAI sliding
    window over ``train.patch_size`` windows with the config's overlap and blending. Windows run on
    ``device``; the stitched result is accumulated on ``out_device``. ``domain`` selects the sub-network of a
    multi-domain model (u2net3d)."""
    inf = cfg.infer

    def net(x: torch.Tensor) -> torch.Tensor:
        return main_output(model(x, domain=domain) if domain else model(x))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return sliding_window_inference(image.to(device), cfg.train.patch_size, inf.sw_batch_size, net,
                                            overlap=inf.overlap, mode=inf.blend, sw_device=device,
                                            device=out_device)
    finally:
        model.train(was_training)
