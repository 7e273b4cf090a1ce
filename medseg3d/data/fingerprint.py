"""The dataset fingerprint: what a planner needs to know about the training cases (as nnU-Net's
``DatasetFingerprintExtractor``), read once and cached.

``fingerprint(info)`` reads every training case with medseg3d's own readers (the ones training uses) and
returns a JSON-able dict:

- ``cases``: per case its ``id``, ``shape`` and ``spacing`` in the file's voxel order, ``orientation`` (the
  axis codes of its affine, nibabel's ``aff2axcodes``), ``shape_ras``/``spacing_ras`` (the same after
  reorientation to RAS, as the preprocessing does), ``crop_shape_ras`` (the bounding box of nonzero voxels, the
  preprocessing's foreground crop, in RAS order), ``voxels``, ``foreground_voxels`` (label > 0),
  ``voxel_volume_ml``, per channel intensity statistics inside the foreground (``intensity``: ``mean``,
  ``std``, ``min``, ``max``, ``p00_5``, ``p50``, ``p99_5``) and per channel what the whole image looks like
  (``image``: ``min``, ``max``, ``integer`` (every voxel an integer), ``air_fraction`` (share of voxels at
  or below -900)), per class (``classes``: ``voxels``, ``fraction`` of the image, ``objects`` (26-connected
  components), ``object_voxels`` (largest first, at most 100) and ``object_ml``), and ``read_seconds``.
- ``channels``: per channel the dataset's foreground statistics (the foreground voxels of every case pooled;
  a case with more than :data:`SAMPLES_PER_CASE` foreground voxels contributes a seeded uniform sample of that
  many) and ``ct_like`` with ``ct_reason``: CT-like intensities (a channel named CT, or integer Hounsfield-like
  values with a floor at or below -900 in most cases) are normalised as nnU-Net's CTNormalization (clip to
  the dataset's foreground [p0.5, p99.5], then z-score with the dataset's foreground mean and std); other
  channels (MRI) get a z-score per image.
- ``classes``: per class (by name, background excluded) the median ``fraction``, the median number of
  ``objects`` per case, and the median and smallest object size in voxels and ml over all cases.
- ``spacing``: median and 10th percentile per RAS axis; ``orientations``: how many cases have each code.

The result is written as ``fingerprint.json`` into ``CACHE/fingerprints/<key>/`` where CACHE is
``cache_dir``, ``$MEDSEG3D_CACHE`` or ``~/.cache/medseg3d`` and the key hashes the dataset's channels, labels
and every training file's path, size and modification time: changing a file makes a new fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedsegError
from ..runtime import cache_root as runtime_cache_root
from ..io.nifti import read_label
from ..io.readers import read_scan
from ..io.scan import atomic_write
from .datasets import DatasetInfo

#: version of the fingerprint's content; a change makes new cache entries
VERSION = 1
#: foreground voxels per case that enter the dataset's pooled intensity statistics (nnU-Net samples 10,000)
SAMPLES_PER_CASE = 100_000
#: object sizes kept per case and class (largest first)
MAX_OBJECTS_LISTED = 100
#: Hounsfield units: air is -1000; an integer image whose floor is at or below this looks like CT
CT_FLOOR_HU = -900.0


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$MEDSEG3D_CACHE``, else ``~/.cache/medseg3d``."""
    return runtime_cache_root(cache_dir)


def _files(info: DatasetInfo) -> list[str]:
    out: list[str] = []
    for case in info.training:
        out += [str(p) for p in case["image"]] + ([str(case["label"])] if case.get("label") else [])
    return out


def fingerprint_key(info: DatasetInfo) -> str:
    """A hash of the channels, labels and every training file's path, size and modification time."""
    stats = []
    for f in _files(info):
        try:
            st = Path(f).stat()
        except OSError:
            raise MedsegError(f"{f}: file not found (listed as a training case of {info.root})") from None
        stats.append([f, st.st_size, st.st_mtime_ns])
    key = json.dumps({"v": VERSION, "root": str(info.root), "channels": info.channels, "labels": info.labels,
                      "files": stats}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fingerprint_path(info: DatasetInfo, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "fingerprints" / fingerprint_key(info) / "fingerprint.json"


def fingerprint(info: DatasetInfo, cache: bool = True, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The fingerprint of a dataset's training cases (see the module docstring); read from the cache when the
    files have not changed, else computed and (with ``cache``) written to it."""
    if not info.training:
        raise MedsegError(f"{info.root}: the dataset has no training cases to fingerprint")
    path = fingerprint_path(info, cache_dir)
    if cache and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache entry is recomputed
    fp = json.loads(json.dumps(compute_fingerprint(info)))  # the same types as a cached one
    if cache:
        text = json.dumps(fp, indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return fp


# ---- computation --------------------------------------------------------------------------------------------
def ras_permutation(affine: np.ndarray) -> list[int]:
    """For each file axis, the RAS axis it becomes after reorientation (nibabel's io_orientation)."""
    from nibabel.orientations import io_orientation

    return [int(a) for a in io_orientation(affine)[:, 0]]


def _to_ras(values, perm: list[int]) -> list:
    out = [None] * 3
    for src, dst in enumerate(perm):
        out[dst] = values[src]
    return out


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {k: None for k in ("mean", "std", "min", "max", "p00_5", "p50", "p99_5")}
    v = values.astype(np.float64, copy=False)
    p = np.percentile(v, [0.5, 50.0, 99.5])
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "p00_5": float(p[0]), "p50": float(p[1]), "p99_5": float(p[2])}


def _bbox_shape(mask: np.ndarray) -> list[int]:
    if not mask.any():
        return list(mask.shape)
    out = []
    for ax in range(mask.ndim):
        proj = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))[0]
        out.append(int(proj[-1] - proj[0] + 1))
    return out


def _objects(mask: np.ndarray) -> list[int]:
    """Voxel counts of the 26-connected components of ``mask``, largest first."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    return sorted((int(s) for s in sizes), reverse=True)


def case_fingerprint(case: dict, labels: dict[str, int], n_channels: int,
                     rng: np.random.Generator | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One case's fingerprint and, per channel, its (sampled) foreground intensities for the pooled stats."""
    t0 = time.perf_counter()
    scan = read_scan(case["image"], channels=n_channels)
    if not case.get("label"):
        raise MedsegError(f"{case['image'][0]}: training case '{case['id']}' has no label file")
    lab = read_label(case["label"], like=scan)
    read_s = time.perf_counter() - t0
    affine = scan.affine
    spacing = [float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
    perm = ras_permutation(affine)
    from nibabel.orientations import aff2axcodes

    fg = lab > 0
    vox_ml = scan.voxel_volume_mm3 / 1000.0
    rng = rng or np.random.default_rng(0)
    intensity, image, samples = [], [], []
    for c in range(scan.data.shape[0]):
        ch = scan.data[c]
        vals = ch[fg]
        intensity.append(_stats(vals))
        if vals.size > SAMPLES_PER_CASE:
            vals = rng.choice(vals, SAMPLES_PER_CASE, replace=False)
        samples.append(vals.astype(np.float64))
        image.append({"min": float(ch.min()), "max": float(ch.max()),
                      "integer": bool(np.all(ch == np.round(ch))),
                      "air_fraction": float(np.mean(ch <= CT_FLOOR_HU))})
    classes = {}
    for name, value in labels.items():
        if value == 0:
            continue
        mask = lab == value
        n = int(mask.sum())
        objs = _objects(mask) if n else []
        classes[name] = {"voxels": n, "fraction": n / lab.size, "objects": len(objs),
                         "object_voxels": objs[:MAX_OBJECTS_LISTED],
                         "object_ml": [o * vox_ml for o in objs[:MAX_OBJECTS_LISTED]]}
    shape = [int(s) for s in scan.shape]
    crop = _bbox_shape(np.any(scan.data != 0, axis=0))
    out = {
        "id": case["id"], "shape": shape, "spacing": spacing, "orientation": "".join(aff2axcodes(affine)),
        "shape_ras": _to_ras(shape, perm), "spacing_ras": _to_ras(spacing, perm),
        "crop_shape_ras": _to_ras(crop, perm), "voxels": int(np.prod(shape)), "foreground_voxels": int(fg.sum()),
        "voxel_volume_ml": vox_ml, "intensity": intensity, "image": image, "classes": classes,
        "read_seconds": read_s,
    }
    return out, samples


def _ct_like(name: str, images: list[dict]) -> tuple[bool, str]:
    if name.strip().upper() == "CT" or name.strip().upper().startswith("CT"):
        return True, f"channel named '{name}'"
    hu = [im["integer"] and im["min"] <= CT_FLOOR_HU and im["air_fraction"] >= 0.001 for im in images]
    if sum(hu) * 2 > len(hu):
        return True, (f"integer values with a floor at or below {CT_FLOOR_HU:g} (air in Hounsfield units) in "
                      f"{sum(hu)} of {len(hu)} cases")
    lo = min(im["min"] for im in images)
    return False, f"no Hounsfield-like floor (lowest value {lo:g}); not named CT"


def compute_fingerprint(info: DatasetInfo, sample_seed: int = 1234) -> dict[str, Any]:
    """Read every training case and summarise (no cache)."""
    rng = np.random.default_rng(sample_seed)
    cases, pooled = [], [[] for _ in info.channels]
    for case in info.training:
        fp, samples = case_fingerprint(case, info.labels, len(info.channels), rng)
        cases.append(fp)
        for c, s in enumerate(samples):
            pooled[c].append(s)
    channels = []
    for c, name in enumerate(info.channels):
        allv = np.concatenate(pooled[c]) if pooled[c] else np.zeros(0)
        ct, why = _ct_like(name, [cs["image"][c] for cs in cases])
        channels.append({"name": name, **_stats(allv), "samples": int(allv.size), "ct_like": ct, "ct_reason": why})
    classes = {}
    for name, value in info.labels.items():
        if value == 0:
            continue
        per = [cs["classes"][name] for cs in cases]
        objs = [o for p in per for o in p["object_voxels"]]
        objs_ml = [o for p in per for o in p["object_ml"]]
        classes[name] = {
            "value": value, "fraction": float(np.median([p["fraction"] for p in per])),
            "objects": float(np.median([p["objects"] for p in per])),
            "cases_present": sum(p["voxels"] > 0 for p in per),
            "object_voxels_median": float(np.median(objs)) if objs else None,
            "object_voxels_min": int(min(objs)) if objs else None,
            "object_ml_median": float(np.median(objs_ml)) if objs_ml else None,
            "object_ml_min": float(min(objs_ml)) if objs_ml else None,
        }
    sp = np.array([cs["spacing_ras"] for cs in cases], dtype=float)
    orient: dict[str, int] = {}
    for cs in cases:
        orient[cs["orientation"]] = orient.get(cs["orientation"], 0) + 1
    return {
        "version": VERSION, "root": str(info.root), "layout": info.layout, "channels": channels,
        "labels": dict(info.labels), "n_cases": len(cases), "case_ids": [c["id"] for c in cases],
        "spacing": {"median": [float(v) for v in np.median(sp, axis=0)],
                    "p10": [float(v) for v in np.percentile(sp, 10, axis=0)]},
        "orientations": orient, "classes": classes, "cases": cases,
    }


def normalization_scheme(fp: dict[str, Any]) -> str:
    """``ct`` when any channel is CT-like, else ``mri``."""
    return "ct" if any(c["ct_like"] for c in fp["channels"]) else "mri"
