"""Segmenter: checkpoint(s) in, label maps in each scan's own geometry out.

A checkpoint carries the resolved config, channel names and label names, so nothing else is needed. The scan
goes through the same preprocessing as training (built from that config); the network runs as a MONAI sliding
window with gaussian blending, optionally over all mirrorings (TTA); class probabilities are mapped back to
the scan's grid by inverting the preprocessing (crop, resampling, reorientation), averaged over the ensemble's
members, turned into labels with the file values the config names, and postprocessed. A region-trained model
(sigmoid outputs, e.g. BraTS WT/TC/ET) has its thresholded regions painted back to label values.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from ..config import Config, PostprocessConfig
from ..data.labels import regions_to_labels
from ..data.transforms import preprocess_transforms, scan_to_metatensor
from ..engine.checkpoint import load_checkpoint
from ..engine.trainer import model_from_checkpoint, pick_device
from ..errors import MedsegError
from ..io.nifti import label_dtype, nifti_like
from ..io.readers import read_scan, scan_from_image
from ..io.scan import Scan
from ..io.sitk_image import sitk_like
from .inferer import probability_passes
from .postprocess import postprocess

PathInput = Union[str, os.PathLike]
ImageInput = Union[PathInput, Sequence[PathInput], Any]  # also nibabel / SimpleITK images, numpy arrays
Uncertainty = Literal["entropy", "variance"]


@dataclass
class Member:
    """One network of the ensemble with its own config and preprocessing."""

    model: torch.nn.Module
    config: Config
    source: str
    pre: mt.Compose
    domain: Optional[str] = None  # the sub-network of a multi-domain model


@dataclass
class Prediction:
    """What segmenting one scan gives, all on the scan's own grid: ``labels`` (X, Y, Z, file values),
    ``probabilities`` (C, X, Y, Z; region probabilities (R, ...) for a region-trained model) and ``uncertainty`` (X, Y, Z) when asked for."""

    scan: Scan
    labels: np.ndarray
    probabilities: Optional[np.ndarray]
    uncertainty: Optional[np.ndarray]
    runtime_s: float
    passes: int


class Segmenter:
    """Segments scans with a trained model or an ensemble of them.

    >>> seg = Segmenter.from_checkpoint("runs/brats_unet3d_20260101-120000")   # doctest: +SKIP
    >>> label_img = seg.predict("scan.nii.gz")                                 # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, config: Config, channels: list[str], labels: dict[str, int],
                 device: str | torch.device = "auto", source: str = "model", tta: bool = False,
                 regions: dict[str, list[int]] | None = None, domain: str | None = None):
        self.channels = list(channels)
        self.labels = dict(labels)
        self.regions = {k: list(v) for k, v in regions.items()} if regions else None  # sigmoid region outputs
        self.device = pick_device(device) if isinstance(device, str) else device
        self.members: list[Member] = []
        self.tta = tta
        self.postprocess: PostprocessConfig = config.postprocess.model_copy(deep=True)
        self.add_member(model, config, source, domain)

    def add_member(self, model: torch.nn.Module, config: Config, source: str = "model",
                   domain: str | None = None) -> None:
        """Add a network to the ensemble (same channels, labels and regions); probabilities are averaged.
        ``domain`` picks the sub-network of a multi-domain model."""
        # members with the same preprocessing (e.g. folds) share one pipeline, so a scan is preprocessed once
        # (MONAI inverts with the very transform instances that ran)
        pre = next((m.pre for m in self.members if m.config.preprocess == config.preprocess), None) \
            or mt.Compose(preprocess_transforms(config, keys=("image",)))
        self.members.append(Member(model.to(self.device).eval(), config, source, pre, domain))

    @classmethod
    def from_checkpoint(cls, paths: PathInput | Sequence[PathInput], device: str = "auto",
                        tta: bool = False, domain: str | None = None) -> "Segmenter":
        """Load a checkpoint file, a run folder (its best.pt) or an ONNX file from ``medseg3d export``;
        several make an ensemble, which must share channel names, labels and regions. ``domain`` picks the
        sub-network of a multi-domain model (default: its first domain)."""
        plist = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not plist:
            raise MedsegError("no checkpoint given")
        seg = None
        for path in plist:
            model, cfg, head, source = _load_model(path, domain)
            if seg is None:
                seg = cls(model, cfg, head["channels"], head["labels"], device=device, source=source, tta=tta,
                          regions=head["regions"], domain=head["domain"])
                continue
            for what, mine, theirs in (("channels", seg.channels, head["channels"]),
                                       ("labels", seg.labels, head["labels"]),
                                       ("regions", seg.regions, head["regions"] or None)):
                if mine != theirs:
                    raise MedsegError(f"{source}: its {what} {theirs} differ from {seg.members[0].source}'s "
                                      f"{mine}; ensemble members must share channels, labels and regions")
            seg.add_member(model, cfg, source, head["domain"])
        return seg

    @property
    def config(self) -> Config:
        """The first member's config."""
        return self.members[0].config

    @property
    def sources(self) -> list[str]:
        return [m.source for m in self.members]

    def configure(self, overlap: float | None = None, sw_batch_size: int | None = None) -> None:
        """Override the sliding-window settings of every member."""
        for m in self.members:
            if overlap is not None:
                m.config.infer.overlap = overlap
            if sw_batch_size is not None:
                m.config.infer.sw_batch_size = sw_batch_size

    # ---- inputs -------------------------------------------------------------------------------------------
    def read(self, image: ImageInput, affine: np.ndarray | None = None) -> Scan:
        """A Scan of a path (NIfTI, NRRD, MHA, DICOM series folder), a list of per-channel paths, a nibabel or
        SimpleITK image, a numpy array (X, Y, Z) / (C, X, Y, Z) with ``affine``, or an ``(array, affine)``
        tuple; the channel count must match the model's."""
        if isinstance(image, (str, os.PathLike)) or (isinstance(image, (list, tuple)) and image
                                                     and all(isinstance(p, (str, os.PathLike)) for p in image)):
            return read_scan(image, channels=len(self.channels))
        if isinstance(image, tuple) and len(image) == 2 and isinstance(image[0], np.ndarray):
            image, affine = image
        scan = scan_from_image(image, affine)
        if scan.data.shape[0] != len(self.channels):
            raise MedsegError(f"image has {scan.data.shape[0]} channel(s) but the model expects "
                              f"{len(self.channels)} ({', '.join(self.channels)})")
        return scan

    # ---- prediction ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _member_moments(self, m: Member, x: MetaTensor, scan: Scan, second: bool) -> tuple[np.ndarray, int]:
        """Mean (and, with ``second``, mean square) of the class probabilities over the member's passes on
        ``x`` (the scan through the member's preprocessing), on the scan's grid: (C or 2C, X, Y, Z), and the
        number of passes."""
        total, total_sq, n = 0, 0, 0
        for p in probability_passes(m.model, x.as_tensor()[None], m.config, self.device, self.tta,
                                    domain=m.domain, sigmoid=self.regions is not None):
            total = total + p[0]
            if second:
                total_sq = total_sq + p[0] ** 2
            n += 1
        stacked = torch.cat([total / n, total_sq / n]) if second else total / n
        ops = copy.deepcopy(x.applied_operations)  # the inverse consumes them; x may serve another member
        inv = m.pre.inverse({"image": MetaTensor(stacked.cpu(), meta=x.meta, applied_operations=ops)})
        out = inv["image"].as_tensor().numpy()
        if out.shape[1:] != scan.shape:
            raise RuntimeError(f"internal: inverted shape {out.shape[1:]} != scan shape {scan.shape}")
        return out, n

    def probabilities(self, scan: Scan, variance: bool = False) -> tuple[np.ndarray, Optional[np.ndarray], int]:
        """Class probabilities (C, X, Y, Z) on the scan's grid averaged over TTA passes and ensemble members
        (region probabilities (R, ...) for a region-trained model); with ``variance``, also the per-voxel
        variance over all passes (mean over classes); and the number of passes. Voxels outside the
        preprocessing crop are background."""
        if not np.any(scan.data):
            raise MedsegError(f"{scan.name}: the image is empty (every voxel is zero)")
        prepared: dict[int, MetaTensor] = {}  # one preprocessing per shared pipeline
        runs = []
        for m in self.members:
            if id(m.pre) not in prepared:
                prepared[id(m.pre)] = m.pre({"image": scan_to_metatensor(scan)})["image"]
            runs.append(self._member_moments(m, prepared[id(m.pre)], scan, variance))
        passes = sum(n for _, n in runs)
        moments = sum(out * n for out, n in runs) / passes
        c = len(self.regions or self.labels)
        probs = moments[:c]
        var = np.clip(moments[c:] - probs ** 2, 0, None).mean(0) if variance else None
        if not self.regions:  # outside the crop nothing was predicted: background (regions are 0 there already)
            probs[0] += np.clip(1 - probs.sum(0), 0, None)
        return probs, var, passes

    def labels_from_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities on the scan's grid -> label values: argmax over classes, or for region outputs
        thresholds at 0.5 painted in region order (BraTS: WT -> 2, TC -> 1, ET -> 4 or 3)."""
        values = np.asarray(list(self.labels.values()))
        if self.regions:
            return regions_to_labels(probs, self.regions, dtype=label_dtype(values))
        return values[np.argmax(probs, axis=0)].astype(label_dtype(values))

    def segment(self, scan: Scan, uncertainty: Uncertainty | None = None) -> Prediction:
        """Labels (postprocessed), probabilities and, if asked, uncertainty of one scan on its own grid:
        ``entropy`` of the mean probabilities (nats) or ``variance`` over TTA passes and ensemble members."""
        if uncertainty not in (None, "entropy", "variance"):
            raise MedsegError(f"unknown uncertainty '{uncertainty}'; use entropy or variance")
        t0 = time.perf_counter()
        probs, var, passes = self.probabilities(scan, variance=uncertainty == "variance")
        if uncertainty == "variance" and passes == 1:
            raise MedsegError("variance needs several passes: turn on TTA or give several models")
        labels = postprocess(self.labels_from_probabilities(probs), self.postprocess, self.labels,
                             scan.voxel_volume_mm3)
        unc = var if uncertainty == "variance" else (_entropy(probs, self.regions is not None)
                                                      if uncertainty == "entropy" else None)
        return Prediction(scan, labels, probs, None if unc is None else unc.astype(np.float32),
                          time.perf_counter() - t0, passes)

    def predict(self, image: ImageInput, affine: np.ndarray | None = None) -> Any:
        """Segment one scan and return the label map as the same kind as the input: a nibabel image for a
        nibabel image or a NIfTI path; a SimpleITK image for a SimpleITK image or an NRRD/MHA/DICOM path; a
        numpy array (X, Y, Z) for a numpy array (with ``affine=``, or as ``(array, affine)``). The map has the
        input's exact geometry."""
        scan = self.read(image, affine)
        pred = self.segment(scan)
        self.last_runtime = pred.runtime_s
        return as_input_kind(pred.labels, scan)

    def show(self, image: ImageInput, labels: Any = None, affine: np.ndarray | None = None):
        """A matplotlib Figure (for notebooks): three orthogonal slices through the largest structure with a
        coloured overlay and a legend. ``labels`` (any kind ``predict`` returns) defaults to a prediction."""
        from ..io.preview import preview_figure

        scan = self.read(image, affine)
        if labels is None:
            lab = self.segment(scan).labels
        else:
            lab = np.rint(scan_from_image(labels, scan.affine).data[0]).astype(np.int32)
            if lab.shape != scan.shape:
                raise MedsegError(f"labels have shape {lab.shape} but the image {scan.shape}")
        return preview_figure(scan, lab, self.labels)

    def __repr__(self) -> str:
        return (f"Segmenter({self.config.model.name} x{len(self.members)}, channels={self.channels}, "
                f"labels={list(self.labels)}, tta={self.tta}, device={self.device})")


def _entropy(probs: np.ndarray, sigmoid: bool) -> np.ndarray:
    """Entropy (nats) per voxel: of the class distribution, or summed over independent (sigmoid) regions."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    if sigmoid:
        return -(p * np.log(p) + (1 - p) * np.log(1 - p)).sum(0)
    return -(probs * np.log(p)).sum(0)


def _load_model(path: PathInput, domain: str | None = None) -> tuple[torch.nn.Module, Config, dict, str]:
    """(model, config, head, source) of a checkpoint, run folder or exported ONNX file; ``head`` holds the
    ``channels``, ``labels``, ``regions`` and ``domain`` the outputs belong to."""
    if str(path).lower().endswith(".onnx"):
        from .export import load_onnx

        model, cfg, head = load_onnx(path)
        if domain is not None and domain != head["domain"]:
            raise MedsegError(f"{path}: exported for domain '{head['domain']}', not '{domain}'")
        return model, cfg, {**head, "domain": None}, str(path)  # the domain is part of the exported graph
    ckpt = load_checkpoint(path)
    model, cfg, head = model_from_checkpoint(ckpt, domain)
    return model, cfg, head, ckpt["path"]


def as_input_kind(array: np.ndarray, scan: Scan) -> Any:
    """``array`` (X, Y, Z) in the kind the scan came as: nibabel image, SimpleITK image, or numpy array."""
    import SimpleITK as sitk

    if scan.reference is None:
        return array
    if isinstance(scan.reference, sitk.Image):
        return sitk_like(array, scan)
    return nifti_like(array, scan)
