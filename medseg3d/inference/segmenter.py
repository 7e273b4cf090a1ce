"""Segmenter: checkpoint(s) in, label maps in each scan's own geometry out.

A checkpoint carries the resolved config, channel names and label names, so nothing else is needed. The scan
goes through the same preprocessing as training (built from that config); the network runs as a MONAI sliding
window with gaussian blending, optionally over all mirrorings (TTA); class probabilities are mapped back to
the scan's grid by inverting the preprocessing (crop, resampling, reorientation), averaged over the ensemble's
members, turned into labels with the file values the config names, and postprocessed. A region-trained model
(sigmoid outputs, e.g. BraTS WT/TC/ET) has its thresholded regions painted back to label values.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch

from ..bundle import Head, ModelContract, load_model
from ..config import Config, PostprocessConfig
from ..data.labels import regions_to_labels
from ..errors import MedsegError
from ..io.nifti import label_dtype, nifti_like
from ..io.readers import read_scan, scan_from_image
from ..io.scan import Scan
from ..io.sitk_image import sitk_like
from ..runtime import pick_device
from .postprocess import postprocess
from .predictor import Member, Predictor

PathInput = Union[str, os.PathLike]
ImageInput = Union[PathInput, Sequence[PathInput], Any]  # also nibabel / SimpleITK images, numpy arrays
Uncertainty = Literal["entropy", "variance"]


@dataclass
class Prediction:
    """What segmenting one scan gives, all on the scan's own grid: ``labels`` (X, Y, Z, file values),
    ``probabilities`` (C, X, Y, Z; region probabilities (R, ...) for a region-trained model) and
    ``uncertainty`` (X, Y, Z) when asked for."""

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
                 regions: dict[str, list[int]] | None = None, domain: str | None = None,
                 mirror_axes: tuple[int, ...] | None = None, engine: str | None = None,
                 precision: str | None = None):
        head = Head(list(channels), dict(labels), {k: list(v) for k, v in regions.items()} if regions else None,
                    domain)
        self.predictor = Predictor(pick_device(device) if isinstance(device, str) else device, tta, engine,
                                   precision)
        self.postprocess: PostprocessConfig = config.postprocess.model_copy(deep=True)
        self.add_member(model, config, source, head, mirror_axes)

    @property
    def channels(self) -> list[str]:
        return self.head.channels

    @property
    def labels(self) -> dict[str, int]:
        return self.head.labels

    @property
    def regions(self) -> dict[str, list[int]] | None:  # sigmoid region outputs
        return self.head.regions

    @property
    def head(self) -> Head:
        return self.members[0].head

    @property
    def codes(self) -> dict | None:
        """The SNOMED CT codes the config gives for the labels (of the model's domain), for DICOM writers."""
        d = self.config.data
        dom = self.head.domain
        return d.domains[dom].codes if d.domains and dom in d.domains else d.codes

    @property
    def members(self) -> list[Member]:
        return self.predictor.members

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def tta(self) -> bool:
        return self.predictor.tta

    @tta.setter
    def tta(self, value: bool) -> None:
        self.predictor.tta = bool(value)

    def add_member(self, model: torch.nn.Module, config: Config, source: str = "model", head: Head | None = None,
                   mirror_axes: tuple[int, ...] | None = None) -> Member:
        """Add a network to the ensemble (same channels, labels and regions); probabilities are averaged.
        ``mirror_axes`` are the axes TTA may mirror (default: those the config's training mirrored)."""
        from ..bundle import training_mirror_axes

        head = head or self.head
        if self.members:
            for what in ("channels", "labels", "regions"):
                mine, theirs = getattr(self.head, what), getattr(head, what)
                if mine != theirs:
                    raise MedsegError(f"{source}: its {what} {theirs} differ from {self.members[0].source}'s "
                                      f"{mine}; ensemble members must share channels, labels and regions")
        axes = training_mirror_axes(config) if mirror_axes is None else mirror_axes
        return self.predictor.add(model, config, head, axes, source)

    @classmethod
    def from_contract(cls, contract: ModelContract, device: str | torch.device = "auto", tta: bool = False,
                      domain: str | None = None, engine: str | None = None,
                      precision: str | None = None) -> "Segmenter":
        model, head = contract.build(domain)
        return cls(model, contract.config, head.channels, head.labels, device=device, source=contract.source,
                   tta=tta, regions=head.regions, domain=head.domain, mirror_axes=contract.mirror_axes,
                   engine=engine, precision=precision)

    @classmethod
    def from_checkpoint(cls, paths: PathInput | Sequence[PathInput], device: str = "auto",
                        tta: bool = False, domain: str | None = None, engine: str | None = None,
                        precision: str | None = None) -> "Segmenter":
        """Load a checkpoint file, a run folder (its best.pt), or an ONNX or TorchScript file from
        ``medseg3d export``; several make an ensemble, which must share channel names, labels and regions.
        ``domain`` picks the sub-network of a multi-domain model (default: its first domain). ``engine``
        ('auto', 'torch', 'onnxruntime', 'openvino') and ``precision`` ('auto', 'fp32', 'bf16') override the
        model's ``infer`` settings for the windows (:mod:`medseg3d.inference.engines`)."""
        plist = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not plist:
            raise MedsegError("no checkpoint given")
        seg = None
        for path in plist:
            contract = load_model(path)
            if seg is None:
                seg = cls.from_contract(contract, device, tta, domain, engine, precision)
                continue
            model, head = contract.build(domain)
            seg.add_member(model, contract.config, contract.source, head, contract.mirror_axes)
        return seg

    @property
    def config(self) -> Config:
        """The first member's config."""
        return self.members[0].config

    @property
    def sources(self) -> list[str]:
        return [m.source for m in self.members]

    def configure(self, overlap: float | None = None, sw_batch_size: int | None = None,
                  threads: int | None = None, skip_empty: bool | None = None) -> None:
        """Override the sliding-window settings of every member (None keeps one)."""
        if overlap is not None and not 0 <= overlap < 1:
            raise MedsegError(f"overlap {overlap} (--overlap, infer.overlap) is outside [0, 1): it is the fraction "
                              f"of a window shared with its neighbour, e.g. 0.5")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise MedsegError(f"sw_batch_size {sw_batch_size} (--sw-batch-size, infer.sw_batch_size) must be a "
                              f"positive number of windows per pass, e.g. 2")
        if threads is not None and threads < 1:
            raise MedsegError(f"threads {threads} (--threads) must be a positive number of threads")
        changes = {k: v for k, v in (("overlap", overlap), ("sw_batch_size", sw_batch_size), ("threads", threads),
                                     ("skip_empty", skip_empty)) if v is not None}
        for m in self.members:
            if any(getattr(m.config.infer, k) != v for k, v in changes.items()):
                for key, value in changes.items():
                    setattr(m.config.infer, key, value)
                m.runners.clear()  # (built for the old settings)

    def set_postprocess(self, **overrides: Any) -> None:
        """Override postprocessing settings (keys of the config's ``postprocess`` section; None keeps one).
        ``relabel`` may also be ``'SOURCE:TARGET:ML'`` (e.g. ``'enhancing:necrotic:0.5'``) or ``'none'``."""
        raw = self.postprocess.model_dump()
        raw.update({k: v for k, v in overrides.items() if v is not None})
        rel = raw.get("relabel")
        if isinstance(rel, str):
            parts = rel.split(":")
            if rel.lower() == "none":
                raw["relabel"] = None
            elif len(parts) == 3:
                raw["relabel"] = {"source": parts[0], "target": parts[1], "below_ml": parts[2]}
            else:
                raise MedsegError(f"relabel {rel!r}: expected SOURCE:TARGET:ML, e.g. enhancing:necrotic:0.5")
        try:
            post = PostprocessConfig.model_validate(raw)
        except ValueError as e:
            err = e.errors()[0]
            flag = _POSTPROCESS_FLAGS.get(str(err["loc"][0])) if err["loc"] else None
            msg = err["msg"][:1].lower() + err["msg"][1:]
            raise MedsegError(f"postprocessing option {'.'.join(map(str, err['loc']))}{f' ({flag})' if flag else ''}: "
                              f"{msg}, got {err.get('input')!r}") from None
        if post.relabel is not None:
            for key in ("source", "target"):
                if getattr(post.relabel, key) not in self.labels:
                    raise MedsegError(f"postprocess.relabel: unknown class '{getattr(post.relabel, key)}'; the "
                                      f"model's classes are {', '.join(self.labels)}")
        self.postprocess = post

    # ---- inputs -------------------------------------------------------------------------------------------
    def read(self, image: ImageInput, affine: np.ndarray | None = None, allow_2d: bool | None = None) -> Scan:
        """A Scan of a path (NIfTI, NRRD, MHA, DICOM series folder), a list of per-channel paths, a nibabel or
        SimpleITK image, a numpy array (X, Y, Z) / (C, X, Y, Z) with ``affine``, or an ``(array, affine)``
        tuple; the channel count must match the model's. A single-slice image is refused for a 3D model unless
        ``allow_2d`` (a 2D model takes one by default)."""
        allow_2d = self.config.model.spatial_dims == 2 if allow_2d is None else allow_2d
        if isinstance(image, (str, os.PathLike)) or (isinstance(image, (list, tuple)) and image
                                                     and all(isinstance(p, (str, os.PathLike)) for p in image)):
            return read_scan(image, channels=len(self.channels), allow_2d=allow_2d)
        if isinstance(image, tuple) and len(image) == 2 and isinstance(image[0], np.ndarray):
            image, affine = image
        scan = scan_from_image(image, affine, allow_2d=allow_2d)
        if scan.data.shape[0] != len(self.channels):
            raise MedsegError(f"image has {scan.data.shape[0]} channel(s) but the model expects "
                              f"{len(self.channels)} ({', '.join(self.channels)})")
        return scan

    # ---- prediction ---------------------------------------------------------------------------------------
    def probabilities(self, scan: Scan, variance: bool = False) -> tuple[np.ndarray, Optional[np.ndarray], int]:
        """Class probabilities (C, X, Y, Z) on the scan's grid averaged over TTA passes and ensemble members
        (region probabilities for a region-trained model), the variance over passes if asked, and the number of
        passes (see :meth:`medseg3d.inference.predictor.Predictor.probabilities`)."""
        return self.predictor.probabilities(scan, variance)

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

    def predict(self, image: ImageInput, affine: np.ndarray | None = None, allow_2d: bool | None = None) -> Any:
        """Segment one scan and return the label map as the same kind as the input: a nibabel image for a
        nibabel image or a NIfTI path; a SimpleITK image for a SimpleITK image or an NRRD/MHA/DICOM path; a
        numpy array (X, Y, Z) for a numpy array (with ``affine=``, or as ``(array, affine)``). The map has the
        input's exact geometry."""
        scan = self.read(image, affine, allow_2d)
        pred = self.segment(scan)
        self.last_runtime = pred.runtime_s
        return as_input_kind(pred.labels, scan)

    def _labels_for(self, scan: Scan, labels: Any) -> np.ndarray:
        """A given label map (any kind ``predict`` returns) on the scan's grid, or a prediction."""
        if labels is None:
            return self.segment(scan).labels
        lab = np.rint(scan_from_image(labels, scan.affine, allow_2d=True).data[0]).astype(np.int32)
        if lab.shape != scan.shape:
            raise MedsegError(f"labels have shape {lab.shape} but the image {scan.shape}")
        return lab

    def show(self, image: ImageInput, labels: Any = None, affine: np.ndarray | None = None):
        """A matplotlib Figure (for notebooks): three orthogonal slices through the largest structure with a
        coloured overlay and a legend, radiological convention. ``labels`` (any kind ``predict`` returns)
        defaults to a prediction. The notebook's matplotlib backend is left as it is."""
        from ..io.preview import preview_figure

        scan = self.read(image, affine)
        return preview_figure(scan, self._labels_for(scan, labels), self.labels, channel_names=self.channels)

    def statistics(self, image: ImageInput, labels: Any = None, affine: np.ndarray | None = None) -> dict:
        """Per label name: ``value``, ``voxels``, ``volume_ml``, ``components`` (26-connected) and, per input
        channel, the ``mean``, ``median`` and ``std`` of its intensities inside the label (``intensity``), as
        ``medseg3d infer --statistics`` reports. ``labels`` defaults to a prediction."""
        from ..io.report import statistics

        scan = self.read(image, affine)
        return statistics(scan, self._labels_for(scan, labels), self.labels, self.channels)

    def fast(self, factor: float = 1.5) -> str:
        """Switch to a quick look: every member segments on a grid ``factor`` times coarser than the one it was
        trained on, windows without overlap, no TTA. Returns the sentence the report states."""
        changes = []
        for m in self.members:
            cfg = m.config.model_copy(deep=True)
            if cfg.preprocess.spacing is not None:
                cfg.preprocess.spacing = [round(v * factor, 4) for v in cfg.preprocess.spacing]
                changes.append(f"spacing {'x'.join(f'{v:g}' for v in cfg.preprocess.spacing)} mm")
            cfg.infer.overlap = 0.0
            self.predictor.reconfigure(m, cfg)
        self.tta = False
        self.fast_mode = (f"fast: a {factor:g}x coarser grid ({', '.join(sorted(set(changes))) or 'native spacing'}),"
                          f" no window overlap, no TTA")
        return self.fast_mode

    def describe(self) -> dict[str, Any]:
        """How inference runs (device, threads, TTA, the fast mode, the window engine), for reports."""
        return {"device": str(self.device), "threads": torch.get_num_threads(), "tta": self.tta,
                "fast": getattr(self, "fast_mode", None), **self.predictor.describe()}

    def __repr__(self) -> str:
        return (f"Segmenter({self.config.model.name} x{len(self.members)}, channels={self.channels}, "
                f"labels={list(self.labels)}, tta={self.tta}, device={self.device})")


_POSTPROCESS_FLAGS = {"min_component_ml": "--min-size-ml", "largest_component": "--largest-component",
                      "fill_holes": "--fill-holes", "relabel": "--relabel"}  # the options' `medseg3d infer` flags


def _entropy(probs: np.ndarray, sigmoid: bool) -> np.ndarray:
    """Entropy (nats) per voxel: of the class distribution, or summed over independent (sigmoid) regions."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    if sigmoid:
        return -(p * np.log(p) + (1 - p) * np.log(1 - p)).sum(0)
    return -(probs * np.log(p)).sum(0)


def as_input_kind(array: np.ndarray, scan: Scan) -> Any:
    """``array`` (X, Y, Z) in the kind the scan came as: nibabel image, SimpleITK image, or numpy array."""
    import SimpleITK as sitk

    if scan.reference is None:
        return array
    if isinstance(scan.reference, sitk.Image):
        return sitk_like(array, scan)
    return nifti_like(array, scan)
