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

A case is a dict ``{"id": str, "image": [paths], "label": path | None}``. Case ids are unique; an MSD entry
must name files inside the dataset folder (relative paths, or absolute paths under the folder). With
``strict=False`` those two rules and the existence of the listed files are left to
:func:`medseg3d.data.check.check_dataset`, which reports every problem at once instead of the first.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedsegError
from ..io.brats import (BRATS_ALIASES, BRATS_CHANNELS, BRATS_NAMING, brats_case_files,  # noqa: F401
                        brats_channel_order, brats_naming, is_brats_folder)
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
    """``p`` (relative to ``root``, or absolute) as a normalised absolute path. Symbolic links are not
    followed, so a dataset whose sub-folders are links to another disk keeps its files under its root."""
    return Path(os.path.normpath(os.path.join(os.path.abspath(root), str(p))))


def inside_root(root: str | Path, path: str | Path) -> bool:
    """Whether ``path`` (absolute, normalised) lies in the dataset folder ``root``, named either as given or
    with its links resolved."""
    path = os.path.normpath(os.path.abspath(path))
    for base in {os.path.abspath(root), os.path.realpath(root)}:
        if os.path.commonpath([base, path]) == base:
            return True
    return False


def _entry_files(entry: Any, key: str, path: Path, where: str) -> list[str]:
    """The file(s) an MSD entry names under ``key`` (an entry may also be a bare image path)."""
    value = entry.get(key) if isinstance(entry, dict) else (entry if key == "image" else None)
    if value is None:
        return []
    values = value if isinstance(value, list) and key == "image" else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        what = "a path, or a list of paths one per channel" if key == "image" else "one path"
        raise MedsegError(f"{path}: {where} '{key}' must be {what}, got {value!r}")
    return values


def _msd(root: Path, meta: dict, path: Path, strict: bool = True) -> DatasetInfo:
    channels = _ordered_names(meta.get("modality") or meta.get("channel_names") or {"0": "image"}, "modality", path)
    labels = _labels(meta.get("labels", {}), path)
    lists: dict[str, list[dict]] = {}
    for section in ("training", "test"):
        entries = meta.get(section, [])
        if not isinstance(entries, list):
            raise MedsegError(f"{path}: '{section}' must be a list of entries")
        cases, first_entry = [], {}
        for i, entry in enumerate(entries):
            images = _entry_files(entry, "image", path, f"{section} entry {i}")
            if not images:
                raise MedsegError(f"{path}: {section} entry {i} has no 'image'")
            label = _entry_files(entry, "label", path, f"{section} entry {i}") if section == "training" else []
            for key, files in (("image", images), ("label", label)):
                for f in files:
                    if strict and not inside_root(root, _resolve(root, f)):
                        raise MedsegError(f"{path}: {section} entry {i} {key} '{f}' lies outside the dataset "
                                          f"folder {root}; list files inside it (e.g. ./imagesTr/CASE.nii.gz)")
            image = [str(_resolve(root, f)) for f in images]
            case = {"id": case_name(image[0]), "image": image,
                    "label": str(_resolve(root, label[0])) if label else None}
            if strict and case["id"] in first_entry:
                j = first_entry[case["id"]]
                raise MedsegError(f"{path}: {section} entries {j} and {i} are both case '{case['id']}' "
                                  f"({cases[j]['image'][0]} and {image[0]}); case ids come from the image file "
                                  f"names and must be unique, so rename or remove one")
            first_entry.setdefault(case["id"], i)
            cases.append(case)
        lists[section] = cases
    if strict:
        for case in lists["training"]:  # (the nnU-Net and BraTS layouts find their files by listing folders)
            for f in case["image"] + ([case["label"]] if case["label"] else []):
                if not Path(f).is_file():
                    raise MedsegError(f"{f}: listed in {path} but not found; fix the entry or put the file there")
    return DatasetInfo(root, "msd", channels, labels, lists["training"], lists["test"])


def nnunet_file_ending(meta: dict, path: Path) -> str:
    """The ``file_ending`` of an nnU-Net dataset.json ('.nii.gz' when absent; a missing leading dot is added)."""
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.strip("."):
        raise MedsegError(f"{path}: 'file_ending' must be a file suffix such as '.nii.gz' or '.mha', got {ending!r}")
    return ending if ending.startswith(".") else "." + ending


def _nnunet(root: Path, meta: dict, path: Path, strict: bool = True) -> DatasetInfo:
    if "channel_names" not in meta:
        raise MedsegError(f"{path}: an nnU-Net dataset.json needs 'channel_names'")
    channels = _ordered_names(meta["channel_names"], "channel_names", path)
    labels = _labels(meta.get("labels", {}), path)
    ending = nnunet_file_ending(meta, path)

    def cases(folder: str, label_folder: str | None) -> list[dict]:
        d = root / folder
        if not d.is_dir():
            return []
        ids = sorted({f.name[: -len(ending) - 5] for f in d.glob(f"*_0000{ending}")})
        out = []
        for cid in ids:
            image = [d / f"{cid}_{c:04d}{ending}" for c in range(len(channels))]
            label = root / label_folder / f"{cid}{ending}" if label_folder else None
            if strict:
                for f in image:
                    if not f.is_file():
                        raise MedsegError(f"{f}: missing channel file for case '{cid}' ({len(channels)} channels "
                                          f"expected)")
                if label is not None and not label.is_file():
                    raise MedsegError(f"{label}: missing label for case '{cid}'")
            out.append({"id": cid, "image": [str(f) for f in image], "label": str(label) if label else None})
        return out

    training = cases("imagesTr", "labelsTr")
    if not training:
        raise MedsegError(f"{root / 'imagesTr'}: no training cases (*_0000{ending}) found")
    return DatasetInfo(root, "nnunet", channels, labels, training, cases("imagesTs", None))


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
                 channels: list[str] | None = None, labels: dict[str, int] | None = None,
                 strict: bool = True) -> DatasetInfo:
    """Read a dataset folder; ``channels``/``labels`` from the config take precedence over dataset.json.

    ``strict=False`` keeps cases whose files are missing, duplicated or outside the folder, for
    :func:`medseg3d.data.check.check_dataset` to report together."""
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
        info = _msd(root, meta, path, strict) if layout == "msd" else _nnunet(root, meta, path, strict)
    if channels is not None:
        if len(channels) != len(info.channels):
            raise MedsegError(f"{path if layout != 'brats' else root}: the config names {len(channels)} channels "
                              f"but the dataset has {len(info.channels)}")
        info.channels = list(channels)
    if labels is not None:
        info.labels = dict(sorted(labels.items(), key=lambda kv: kv[1]))
    return info


def load_source(src, strict: bool = True) -> DatasetInfo:
    """Read the dataset of one config data section (:class:`medseg3d.config.DataSource`)."""
    return load_dataset(src.root, src.layout, src.dataset_json, src.channels, src.labels, strict)


# ------------------------------------------------------------------------------------------------ splits
NNUNET_SPLIT_SEED = 12345  # nnU-Net v2's generate_crossval_split seed (nnUNetTrainer.do_split)


def _duplicates(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({i for i in ids if i in seen or seen.add(i)})


def _kfold_val_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """The validation indices of scikit-learn's ``KFold(n_splits=k, shuffle=True, random_state=seed)``: the
    indices 0..n-1 shuffled by ``np.random.RandomState(seed)``, cut into k consecutive folds of which the
    first ``n % k`` hold one more; each fold's indices in ascending order."""
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(k, n // k, dtype=int)
    sizes[: n % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def make_splits(ids: list[str], num_folds: int, seed: int,
                scheme: str = "medseg3d") -> list[dict[str, list[str]]]:
    """k-fold splits (as nnU-Net's splits_final.json: a list of {"train", "val"}) of the case ids.

    - ``scheme="medseg3d"``: seeded by ``seed`` (numpy's default_rng permutation, dealt round-robin); fewer
      cases than folds gives one fold per case.
    - ``scheme="nnunet"``: exactly nnU-Net v2's folds: its ``generate_crossval_split`` (scikit-learn's
      ``KFold(n_splits=num_folds, shuffle=True, random_state=12345)``) on the sorted ids, so a model trained
      here on fold f saw the cases nnU-Net's fold f did. ``seed`` is not used (nnU-Net's is fixed).
    """
    if scheme not in ("medseg3d", "nnunet"):
        raise MedsegError(f"unknown split scheme {scheme!r}; use 'medseg3d' or 'nnunet'")
    dup = _duplicates(list(ids))
    if dup:
        raise MedsegError(f"case id(s) {dup[:5]} appear more than once; each case needs a unique id to be "
                          f"split into folds")
    ids = sorted(ids)
    if len(ids) < 2:
        raise MedsegError(f"need at least 2 training cases to split, got {len(ids)}")
    if scheme == "nnunet":
        if len(ids) < num_folds:
            raise MedsegError(f"nnU-Net's {num_folds}-fold split needs at least {num_folds} training cases, got "
                              f"{len(ids)}; lower data.num_folds or use data.split_scheme 'medseg3d'")
        folds = [[ids[j] for j in val] for val in _kfold_val_indices(len(ids), num_folds, NNUNET_SPLIT_SEED)]
    else:
        k = min(num_folds, len(ids))
        order = np.random.default_rng(seed).permutation(len(ids))
        folds = [sorted(ids[j] for j in order[i::k]) for i in range(k)]
    return [{"train": sorted(set(ids) - set(f)), "val": f} for f in folds]


def validate_splits(splits: Any, ids: list[str] | None = None, source: str | Path = "splits") -> list[dict]:
    """Check a list of {"train": [...], "val": [...]} (medseg3d's splits.json or nnU-Net's splits_final.json,
    taken as they are): every id is a known case (when ``ids`` is given), no id is in two validation folds,
    and no fold validates on a case it trains on. Returns ``splits``."""
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and {"train", "val"} <= set(s)
            and all(isinstance(s[k], list) and all(isinstance(i, str) for i in s[k]) for k in ("train", "val"))
            for s in splits):
        raise MedsegError(f"{source}: splits must be a JSON list of {{'train': [ids], 'val': [ids]}}, one per fold")
    known = None if ids is None else set(ids)
    where_val: dict[str, int] = {}
    for f, s in enumerate(splits):
        if known is not None:
            unknown = sorted({i for k in ("train", "val") for i in s[k]} - known)
            if unknown:
                raise MedsegError(f"{source}: fold {f} names case id(s) {unknown[:5]} that the dataset does not "
                                  f"have; make the splits from this dataset's case ids")
        both = sorted(set(s["train"]) & set(s["val"]))
        if both:
            raise MedsegError(f"{source}: fold {f} has case id(s) {both[:5]} in both 'train' and 'val'; a fold "
                              f"must not validate on cases it trains on")
        for i in s["val"]:
            if where_val.get(i) == f:
                raise MedsegError(f"{source}: case '{i}' is listed twice in the validation set of fold {f}")
            if i in where_val:
                raise MedsegError(f"{source}: case '{i}' is in the validation set of folds {where_val[i]} and "
                                  f"{f}; each case may be validated in one fold only")
            where_val[i] = f
    return splits


def load_splits(path: str | Path, ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Read and validate a splits file (:func:`validate_splits`)."""
    p = Path(path)
    if not p.is_file():
        raise MedsegError(f"{p}: splits file not found")
    try:
        splits = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise MedsegError(f"{p}: not valid JSON ({e})") from None
    return validate_splits(splits, ids, p)
