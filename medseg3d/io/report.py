"""The JSON report of one segmented case: per label its value, voxel count, volume and number of connected
components (26-connected, as postprocessing counts them), plus runtime, device, model and files."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from ..inference.postprocess import components
from .scan import Scan


def label_statistics(labels: np.ndarray, names: dict[str, int], voxel_volume_mm3: float) -> dict[str, dict]:
    """Per label name: ``value``, ``voxels``, ``volume_ml`` (voxels x voxel volume / 1000), ``components``."""
    out = {}
    for name, value in names.items():
        mask = labels == value
        voxels = int(mask.sum())
        out[name] = {"value": int(value), "voxels": voxels, "volume_ml": voxels * voxel_volume_mm3 / 1000.0,
                     "components": int(components(mask)[1].size) if voxels else 0}
    return out


def case_report(scan: Scan, labels: np.ndarray, names: dict[str, int], *, runtime_s: float, device: str,
                model: dict[str, Any], outputs: Sequence[str], tta: bool, passes: int) -> dict[str, Any]:
    return {
        "case": scan.name,
        "inputs": list(scan.sources),
        "outputs": [str(o) for o in outputs],
        "shape": list(scan.shape),
        "voxel_volume_mm3": scan.voxel_volume_mm3,
        "labels": label_statistics(labels, names, scan.voxel_volume_mm3),
        "runtime_s": round(runtime_s, 3),
        "device": device,
        "model": model,
        "tta": tta,
        "passes": passes,
    }


def report_writer(report: dict[str, Any]):
    text = json.dumps(report, indent=2) + "\n"

    def write(path: str) -> None:
        with open(path, "w") as f:
            f.write(text)
    return write
