"""The JSON report of one segmented case and the statistics table over cases.

Per label: its value, voxel count, volume (ml), number of connected components (26-connected, as
postprocessing counts them) and, given the scan, the mean, median and standard deviation of each input channel
inside it (as TotalSegmentator's ``--statistics``); plus runtime, device, model and files. Statistics of an
absent label are ``null`` (NaN in the CSV table)."""

from __future__ import annotations

import csv
import json
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..errors import MedsegError
from .scan import Scan

_STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity, as medseg3d.inference.postprocess
STATISTICS = ("mean", "median", "std")


def _boxes(labels: np.ndarray, values: Iterable[int]) -> dict[int, tuple[slice, ...] | None]:
    """The bounding box of each value in the map (None when absent), from one pass over the map; the whole
    grid for the background and where the map is not a non-negative integer map."""
    full = tuple(slice(0, s) for s in labels.shape)
    objs = None
    if labels.size and np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0 and labels.max() < 2**31:
        objs = ndimage.find_objects(labels.astype(np.int32, copy=False))
    out = {}
    for v in map(int, values):
        out[v] = full if objs is None or v <= 0 else (objs[v - 1] if v <= len(objs) else None)
    return out


def statistics(scan: Scan | None, labels: np.ndarray, names: Mapping[str, int],
               channel_names: Sequence[str] | None = None, voxel_volume_mm3: float | None = None
               ) -> dict[str, dict[str, Any]]:
    """Per label name: ``value``, ``voxels``, ``volume_ml`` (voxels x voxel volume / 1000), ``components``
    and, when ``scan`` is given, ``intensity``: per input channel (named by ``channel_names``, else ``"0"``,
    ``"1"``, ...) the ``mean``, ``median`` and ``std`` (population) of its voxels inside the label, None when
    the label is absent."""
    labels = np.asarray(labels)
    vv = float(voxel_volume_mm3 if voxel_volume_mm3 is not None else scan.voxel_volume_mm3)
    data = scan.data if scan is not None else None
    if data is not None and data.shape[1:] != labels.shape:
        raise MedsegError(f"{scan.name}: label map shape {labels.shape} differs from the scan's {data.shape[1:]}")
    cnames = [str(c) for c in channel_names] if channel_names is not None else \
        [str(i) for i in range(data.shape[0])] if data is not None else []
    if data is not None and len(cnames) != data.shape[0]:
        raise MedsegError(f"{scan.name}: {len(cnames)} channel names for a scan with {data.shape[0]} channels")
    boxes = _boxes(labels, names.values())
    out: dict[str, dict[str, Any]] = {}
    for name, value in names.items():
        box = boxes[int(value)]
        mask = labels[box] == value if box is not None else np.zeros((0,), bool)
        voxels = int(mask.sum())
        entry: dict[str, Any] = {"value": int(value), "voxels": voxels, "volume_ml": voxels * vv / 1000.0,
                                 "components": int(ndimage.label(mask, structure=_STRUCTURE)[1]) if voxels else 0}
        if data is not None:
            entry["intensity"] = {}
            for c, cname in enumerate(cnames):
                vals = data[c][box][mask].astype(np.float64) if voxels else None
                entry["intensity"][cname] = {s: (float(getattr(np, s)(vals)) if voxels else None)
                                             for s in STATISTICS}
        out[name] = entry
    return out


def label_statistics(labels: np.ndarray, names: dict[str, int], voxel_volume_mm3: float) -> dict[str, dict]:
    """Per label name: ``value``, ``voxels``, ``volume_ml`` (voxels x voxel volume / 1000), ``components``."""
    return statistics(None, labels, names, voxel_volume_mm3=voxel_volume_mm3)


def case_report(scan: Scan, labels: np.ndarray, names: dict[str, int], *, runtime_s: float, device: str,
                model: dict[str, Any], outputs: Sequence[str], tta: bool, passes: int,
                channel_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The report of one case; with ``channel_names`` each label also gets its ``intensity`` statistics."""
    stats = (statistics(scan, labels, names, channel_names) if channel_names is not None
             else label_statistics(labels, names, scan.voxel_volume_mm3))
    return {
        "case": scan.name,
        "inputs": list(scan.sources),
        "outputs": [str(o) for o in outputs],
        "shape": list(scan.shape),
        "voxel_volume_mm3": scan.voxel_volume_mm3,
        "labels": stats,
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


def statistics_rows(case: str, stats: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of one case for :func:`statistics_table`: one per label, intensity columns
    ``<channel>_<mean|median|std>``."""
    rows = []
    for name, entry in stats.items():
        row: dict[str, Any] = {"case": case, "label": name}
        row.update({k: entry[k] for k in ("value", "voxels", "volume_ml", "components") if k in entry})
        for cname, values in (entry.get("intensity") or {}).items():
            for s in STATISTICS:
                row[f"{cname}_{s}"] = values.get(s)
        rows.append(row)
    return rows


def statistics_table(rows: Iterable[Mapping[str, Any]]):
    """``write(path)`` of a CSV table over cases (from :func:`statistics_rows`, or a case report's labels):
    columns ``case, label, value, voxels, volume_ml, components`` then the intensity columns in the order
    first seen; a missing or null statistic is written as ``nan``."""
    rows = [dict(r) for r in rows]
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]

    def cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "nan"
        return f"{v:.10g}" if isinstance(v, float) else v

    def write(path: str) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow([cell(r.get(c)) for c in columns])
    return write
