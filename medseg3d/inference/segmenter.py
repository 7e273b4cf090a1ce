"""Segmenter: a checkpoint in, label maps in each scan's own geometry out.

The checkpoint carries the resolved config, channel names and label names, so nothing else is needed. The
scan goes through the same preprocessing as training (built from that config); the network runs as a MONAI
sliding window with gaussian blending; class probabilities are mapped back to the scan's grid by inverting
the preprocessing (crop, resampling, reorientation), then turned into labels with the file values the
config names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence, Union

import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from ..config import Config, validate_config
from ..data.labels import regions_to_labels
from ..data.transforms import preprocess_transforms, scan_to_metatensor
from ..engine.checkpoint import load_checkpoint
from ..engine.trainer import model_from_checkpoint, pick_device
from ..errors import MedsegError
from ..io.nifti import Scan, label_dtype, like_reference, read_scan
from .inferer import predict_logits

ImageInput = Union[str, Path, Sequence[Union[str, Path]], nib.Nifti1Image]


class Segmenter:
    """Segments scans with a trained model.

    >>> seg = Segmenter.from_checkpoint("runs/brats_unet3d_20260101-120000")   # doctest: +SKIP
    >>> label_img = seg.predict("scan.nii.gz")                                 # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, config: Config, channels: list[str], labels: dict[str, int],
                 device: str | torch.device = "auto", source: str = "model",
                 regions: dict[str, list[int]] | None = None, domain: str | None = None):
        self.config = config
        self.channels = list(channels)
        self.labels = dict(labels)
        self.regions = dict(regions) if regions else None  # sigmoid region outputs (BraTS WT/TC/ET)
        self.domain = domain  # the sub-network of a multi-domain model
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.source = source
        self._pre = mt.Compose(preprocess_transforms(config, keys=("image",)))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", domain: str | None = None) -> "Segmenter":
        """Load a checkpoint file or a run folder (its best.pt); ``domain`` picks the sub-network of a
        multi-domain model (default: its first domain)."""
        ckpt = load_checkpoint(path)
        model, cfg, head = model_from_checkpoint(ckpt, domain)
        return cls(model, cfg, head["channels"], head["labels"], device=device, source=ckpt["path"],
                   regions=head["regions"], domain=head["domain"])

    # ---- inputs -------------------------------------------------------------------------------------------
    def read(self, image: ImageInput) -> Scan:
        if isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            data = np.asarray(image.get_fdata(dtype=np.float32))
            data = data[None] if data.ndim == 3 else np.moveaxis(data.reshape(data.shape[:3] + (-1,)), -1, 0)
            if data.shape[0] != len(self.channels):
                raise MedsegError(f"image has {data.shape[0]} channel(s) but the model expects {len(self.channels)} "
                                  f"({', '.join(self.channels)})")
            return Scan(np.ascontiguousarray(data), np.asarray(image.affine, float), image, [])
        return read_scan(image, channels=len(self.channels))

    # ---- prediction ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def probabilities(self, scan: Scan) -> np.ndarray:
        """Class probabilities (C, X, Y, Z) on the scan's own grid (region probabilities (R, ...) for a
        region-trained model)."""
        if not np.any(scan.data):
            raise MedsegError(f"{scan.name}: the image is empty (every voxel is zero)")
        d = self._pre({"image": scan_to_metatensor(scan)})
        x: MetaTensor = d["image"]
        logits = predict_logits(self.model, x.as_tensor()[None], self.config, self.device, domain=self.domain)
        probs = torch.sigmoid(logits[0].float()) if self.regions else torch.softmax(logits[0].float(), dim=0)
        inv = self._pre.inverse({"image": MetaTensor(probs, meta=x.meta, applied_operations=x.applied_operations)})
        out = inv["image"].as_tensor().numpy()
        if out.shape[1:] != scan.shape:
            raise RuntimeError(f"internal: inverted shape {out.shape[1:]} != scan shape {scan.shape}")
        return out

    def labels_from_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities on the scan's grid -> label values: argmax over classes, or for region outputs
        thresholds at 0.5 painted in region order (BraTS: WT -> 2, TC -> 1, ET -> 4 or 3)."""
        values = np.asarray(list(self.labels.values()))
        if self.regions:
            return regions_to_labels(probs, self.regions, dtype=label_dtype(values))
        return values[np.argmax(probs, axis=0)].astype(label_dtype(values))

    def predict(self, image: ImageInput) -> nib.Nifti1Image:
        """Segment one scan (path, list of per-channel paths, or nibabel image); returns a label NIfTI with the
        scan's shape, affine and qform/sform codes."""
        return self.predict_scan(self.read(image))

    def predict_scan(self, scan: Scan) -> nib.Nifti1Image:
        t0 = time.perf_counter()
        labels = self.labels_from_probabilities(self.probabilities(scan))
        self.last_runtime = time.perf_counter() - t0
        return like_reference(labels, scan.reference, dtype=labels.dtype)

    def __repr__(self) -> str:
        return (f"Segmenter({self.config.model.name}, channels={self.channels}, labels={list(self.labels)}, "
                f"device={self.device})")
