"""Dataset layouts -> case lists.

Two raw layouts are read:

- **MSD** (Medical Segmentation Decathlon): ``dataset.json`` with ``modality`` (index -> channel name),
  ``labels`` (value -> name), ``training`` [{"image", "label"}] (one 4D image per case, or a list of
  per-channel files) and ``test``.
- **nnU-Net v2 raw**: ``imagesTr/CASE_0000.nii.gz`` ... one file per channel, ``labelsTr/CASE.nii.gz``,
  ``dataset.json`` with ``channel_names``, ``labels`` (name -> value) and ``file_ending``.

- **BraTS folders**: ``CASE/CASE_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair`` and ``_seg`` (2018-2021), or
  ``CASE/CASE-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (2023); no dataset.json. Cases without a
  segmentation are test cases. The label convention (1/2/4 or 1/2/3) comes from ``data.brats_labels``.

A case is a dict ``{"id": str, "image": [paths], "label": path | None}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MedsegError
from ..io.scan import case_name


@dataclass
class DatasetInfo:
    root: Path
    layout: str
    channels: list[str]
    labels: dict[str, int]  # name -> value, background first
    training: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MedsegError(f"{path}: dataset.json not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MedsegError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise MedsegError(f"{path}: expected a JSON object")
    return data


def _ordered_names(mapping: dict, what: str, path: Path) -> list[str]:
    try:
        return [str(mapping[k]) for k in sorted(mapping, key=lambda k: int(k))]
    except (ValueError, TypeError):
        raise MedsegError(f"{path}: '{what}' keys must be channel indices '0', '1', ...") from None


def _labels(raw: dict, path: Path) -> dict[str, int]:
    """Both conventions: MSD value->name ({"0": "background"}) and nnU-Net name->value ({"background": 0})."""
    out: dict[str, int] = {}
    for k, v in raw.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = int(v)
        elif isinstance(v, str) and re.fullmatch(r"-?\d+", str(k)):
            out[v] = int(k)
        elif isinstance(v, list):
            raise MedsegError(f"{path}: label '{k}' is a region (a list of values); set data.labels in the config")
        else:
            raise MedsegError(f"{path}: cannot read label entry {k!r}: {v!r}")
    if 0 not in out.values():
        raise MedsegError(f"{path}: the labels need a background with value 0")
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def _resolve(root: Path, p: str) -> Path:
    return (root / p).resolve() if not Path(p).is_absolute() else Path(p)


def _msd(root: Path, meta: dict, path: Path) -> DatasetInfo:
    channels = _ordered_names(meta.get("modality") or meta.get("channel_names") or {"0": "image"}, "modality", path)
    labels = _labels(meta.get("labels", {}), path)
    training = []
    for i, entry in enumerate(meta.get("training", [])):
        if not isinstance(entry, dict) or "image" not in entry:
            raise MedsegError(f"{path}: training entry {i} has no 'image'")
        imgs = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        image = [_resolve(root, p) for p in imgs]
        training.append({"id": case_name(image[0]), "image": [str(p) for p in image],
                         "label": str(_resolve(root, entry["label"])) if entry.get("label") else None})
    for case in training:  # (the nnU-Net and BraTS layouts find their files by listing folders)
        for f in case["image"] + ([case["label"]] if case["label"] else []):
            if not Path(f).is_file():
                raise MedsegError(f"{f}: listed in {path} but not found")
    test = []
    for entry in meta.get("test", []):
        imgs = entry.get("image") if isinstance(entry, dict) else entry
        imgs = imgs if isinstance(imgs, list) else [imgs]
        image = [str(_resolve(root, p)) for p in imgs]
        test.append({"id": case_name(image[0]), "image": image, "label": None})
    return DatasetInfo(root, "msd", channels, labels, training, test)


def _nnunet(root: Path, meta: dict, path: Path) -> DatasetInfo:
    if "channel_names" not in meta:
        raise MedsegError(f"{path}: an nnU-Net dataset.json needs 'channel_names'")
    channels = _ordered_names(meta["channel_names"], "channel_names", path)
    labels = _labels(meta.get("labels", {}), path)
    ending = meta.get("file_ending", ".nii.gz")

    def cases(folder: str, label_folder: str | None) -> list[dict]:
        d = root / folder
        if not d.is_dir():
            return []
        ids = sorted({f.name[: -len(ending) - 5] for f in d.glob(f"*_0000{ending}")})
        out = []
        for cid in ids:
            image = [d / f"{cid}_{c:04d}{ending}" for c in range(len(channels))]
            for f in image:
                if not f.is_file():
                    raise MedsegError(f"{f}: missing channel file for case '{cid}' ({len(channels)} channels expected)")
            label = root / label_folder / f"{cid}{ending}" if label_folder else None
            if label is not None and not label.is_file():
                raise MedsegError(f"{label}: missing label for case '{cid}'")
            out.append({"id": cid, "image": [str(f) for f in image], "label": str(label) if label else None})
        return out

    training = cases("imagesTr", "labelsTr")
    if not training:
        raise MedsegError(f"{root / 'imagesTr'}: no training cases (*_0000{ending}) found")
    return DatasetInfo(root, "nnunet", channels, labels, training, cases("imagesTs", None))


BRATS_CHANNELS = ["T1", "T1ce", "T2", "FLAIR"]
# file suffixes in BRATS_CHANNELS order + the segmentation, per naming scheme
BRATS_NAMING = {"2018": (("_t1", "_t1ce", "_t2", "_flair"), "_seg"),
                "2023": (("-t1n", "-t1c", "-t2w", "-t2f"), "-seg")}


def brats_naming(case_dir: Path) -> tuple[tuple[str, ...], str] | None:
    """The (channel suffixes, segmentation suffix) of a BraTS case folder's naming scheme, or None."""
    for suffixes, seg in BRATS_NAMING.values():
        if (case_dir / f"{case_dir.name}{suffixes[0]}.nii.gz").is_file():
            return suffixes, seg
    return None


# names a model's channels may carry for each BraTS channel (BraTS 2018-2021, 2023, MSD Task01)
BRATS_ALIASES = ({"t1", "t1n", "t1w", "t1-native"}, {"t1ce", "t1c", "t1gd", "t1-gd", "t1-contrast"},
                 {"t2", "t2w"}, {"flair", "t2f", "t2-flair"})


def brats_channel_order(channels: list[str]) -> list[int] | None:
    """For a model's channel names, the index of the BraTS channel (T1, T1ce, T2, FLAIR) each one is, or None
    when they are not the four BraTS channels."""
    idx = [next((i for i, names in enumerate(BRATS_ALIASES) if c.lower() in names), None) for c in channels]
    return idx if None not in idx and sorted(idx) == [0, 1, 2, 3] else None


def brats_case_files(case_dir: Path) -> tuple[list[Path], Path | None] | None:
    """(channel files in BRATS_CHANNELS order, segmentation or None) of a BraTS case folder, or None when it
    is not one; a missing channel file is an error naming it."""
    naming = brats_naming(case_dir)
    if naming is None:
        return None
    suffixes, seg_suffix = naming
    images = [case_dir / f"{case_dir.name}{s}.nii.gz" for s in suffixes]
    for f in images:
        if not f.is_file():
            raise MedsegError(f"{f}: missing channel file for BraTS case '{case_dir.name}'")
    seg = case_dir / f"{case_dir.name}{seg_suffix}.nii.gz"
    return images, seg if seg.is_file() else None


def is_brats_folder(root: Path) -> bool:
    return any(d.is_dir() and brats_naming(d) for d in root.iterdir())


def _brats(root: Path) -> DatasetInfo:
    """BraTS case folders: one sub-folder per case holding its four channel files and (training) its _seg."""
    training, test = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        found = brats_case_files(d)
        if found is None:
            continue
        image, seg = found
        case = {"id": d.name, "image": [str(f) for f in image], "label": str(seg) if seg else None}
        (training if seg else test).append(case)
    if not training:
        raise MedsegError(f"{root}: no BraTS case folders with a segmentation (CASE/CASE_t1.nii.gz ... "
                          f"CASE/CASE_seg.nii.gz) found")
    from .labels import brats_labels

    return DatasetInfo(root, "brats", list(BRATS_CHANNELS), brats_labels("2018"), training, test)


def load_dataset(root: str | Path, layout: str = "auto", dataset_json: str = "dataset.json",
                 channels: list[str] | None = None, labels: dict[str, int] | None = None) -> DatasetInfo:
    """Read a dataset folder; ``channels``/``labels`` from the config take precedence over dataset.json."""
    root = Path(root)
    if not root.is_dir():
        raise MedsegError(f"{root}: dataset folder not found")
    path = root / dataset_json
    if layout == "auto" and not path.is_file() and is_brats_folder(root):
        layout = "brats"
    if layout == "brats":
        info = _brats(root)
    else:
        meta = _read_json(path)
        if layout == "auto":
            layout = "msd" if "training" in meta else "nnunet"
        info = _msd(root, meta, path) if layout == "msd" else _nnunet(root, meta, path)
    if channels is not None:
        if len(channels) != len(info.channels):
            raise MedsegError(f"{path if layout != 'brats' else root}: the config names {len(channels)} channels "
                              f"but the dataset has {len(info.channels)}")
        info.channels = list(channels)
    if labels is not None:
        info.labels = dict(sorted(labels.items(), key=lambda kv: kv[1]))
    return info


def load_source(src) -> DatasetInfo:
    """Read the dataset of one config data section (:class:`medseg3d.config.DataSource`)."""
    return load_dataset(src.root, src.layout, src.dataset_json, src.channels, src.labels)


def make_splits(ids: list[str], num_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Seeded k-fold splits (as nnU-Net's splits_final.json: a list of {"train", "val"})."""
    import numpy as np

    ids = sorted(ids)
    if len(ids) < 2:
        raise MedsegError(f"need at least 2 training cases to split, got {len(ids)}")
    k = min(num_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = [sorted(ids[j] for j in order[i::k]) for i in range(k)]
    return [{"train": sorted(set(ids) - set(f)), "val": f} for f in folds]


def load_splits(path: str | Path) -> list[dict[str, Any]]:
    splits = json.loads(Path(path).read_text()) if Path(path).is_file() else None
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise MedsegError(f"{path}: splits must be a JSON list of {{'train': [...], 'val': [...]}}")
    return splits
