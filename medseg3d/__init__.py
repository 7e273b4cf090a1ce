"""medseg3d: volumetric-first 3D medical image segmentation on PyTorch and MONAI.

The public API::

    import medseg3d
    cfg = medseg3d.load_config("configs/unet3d.yaml", ["train.epochs=2"])
    run_dir = medseg3d.train(cfg)
    seg = medseg3d.Segmenter.from_checkpoint(run_dir)
    label_img = seg.predict("scan.nii.gz")          # a nibabel.Nifti1Image in the scan's geometry

Names are imported lazily so that ``medseg3d --help`` starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .version import __version__

_LAZY = {
    "load_config": ("medseg3d.config", "load_config"),
    "Config": ("medseg3d.config", "Config"),
    "build_model": ("medseg3d.models", "build_model"),
    "MODELS": ("medseg3d.registry", "MODELS"),
    "train": ("medseg3d.engine.trainer", "train"),
    "Trainer": ("medseg3d.engine.trainer", "Trainer"),
    "Segmenter": ("medseg3d.inference.segmenter", "Segmenter"),
    "segment_files": ("medseg3d.inference.batch", "segment_files"),
    "load_model": ("medseg3d.bundle", "load_model"),
    "load_dataset": ("medseg3d.data.datasets", "load_dataset"),
    "MedsegError": ("medseg3d.errors", "MedsegError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medseg3d' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
