"""Inputs -> cases. A case is one scan to segment: one multichannel file, one file per channel, or a DICOM
series folder.

- Files given one by one: ``CASE_0000.nii.gz``-style (nnU-Net) or ``CASE_t1ce.nii.gz``-style (a checkpoint
  channel name, case-insensitive) files are grouped by CASE and put in the checkpoint's channel order; a file
  without such a suffix is a case of its own (a multichannel file, or the only channel).
- A folder: a DICOM series (``.dcm`` files or files with the DICOM magic), an nnU-Net folder
  (``CASE_0000.nii.gz`` ...), BraTS per-case folders (``CASE/CASE_t1.nii.gz``, ``_t1ce``, ``_t2``,
  ``_flair``; ``_seg`` files are ignored), or a plain folder of image files (MSD ``imagesTs/``: one case per
  file, or per ``CASE_<channel>`` group of files, as when the files are given one by one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import MedsegError
from .dicom import is_dicom_dir
from .brats import brats_case_files, brats_channel_order
from .readers import FILE_SUFFIXES
from .scan import PathLike, case_name, image_suffix


@dataclass
class Case:
    name: str
    inputs: list[Path]  # per-channel files in the checkpoint's order, one multichannel file, or a DICOM folder


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and image_suffix(p) in FILE_SUFFIXES


def channel_tag(path: PathLike, channels: Sequence[str]) -> tuple[str, int] | None:
    """``(case, channel index)`` from a ``CASE_0000`` or ``CASE_<channel name>`` file name, else None."""
    stem = case_name(path)
    m = re.fullmatch(r"(.+)_(\d{4})", stem)
    if m:
        return m.group(1), int(m.group(2))
    for i, name in sorted(enumerate(channels), key=lambda t: -len(t[1])):  # 't1ce' before 't1'
        if stem.lower().endswith("_" + name.lower()):
            return stem[: -len(name) - 1], i
    return None


def _ordered(name: str, files: list[Path], channels: Sequence[str]) -> Case:
    """Files of one case put in channel order; every channel exactly once."""
    by_index: dict[int, Path] = {}
    for f in files:
        tag = channel_tag(f, channels)
        if tag is None:
            raise MedsegError(f"{f}: cannot tell which channel it is; name channel files CASE_0000 ... or "
                              f"CASE_<channel> with channels {', '.join(channels)}")
        if tag[1] in by_index:
            raise MedsegError(f"{f}: channel {tag[1]} of case '{name}' is also given by {by_index[tag[1]]}")
        by_index[tag[1]] = f
    missing = [f"{i:04d} ({channels[i]})" for i in range(len(channels)) if i not in by_index]
    if missing:
        raise MedsegError(f"{files[0].parent / name}: case '{name}' lacks channel(s) {', '.join(missing)}; "
                          f"the model expects {len(channels)}: {', '.join(channels)}")
    extra = sorted(set(by_index) - set(range(len(channels))))
    if extra:
        raise MedsegError(f"{by_index[extra[0]]}: channel index {extra[0]} but the model expects "
                          f"{len(channels)} channel(s): {', '.join(channels)}")
    return Case(name, [by_index[i] for i in range(len(channels))])


def _group_files(files: list[Path], channels: Sequence[str]) -> list[Case]:
    groups: dict[str, list[Path]] = {}
    cases: list[Case | str] = []
    for f in files:
        tag = channel_tag(f, channels) if len(channels) > 1 or re.search(r"_\d{4}$", case_name(f)) else None
        if tag is None:
            cases.append(Case(case_name(f), [f]))
        else:
            if tag[0] not in groups:
                cases.append(tag[0])
            groups.setdefault(tag[0], []).append(f)
    return [_ordered(c, groups[c], channels) if isinstance(c, str) else c for c in cases]


def _folder_cases(folder: Path, channels: Sequence[str]) -> list[Case]:
    entries = sorted(folder.iterdir())
    if not any(not e.name.startswith(".") for e in entries):
        raise MedsegError(f"{folder}: the folder is empty; give image files, a folder of them, a DICOM series "
                          "folder, an nnU-Net folder or BraTS case folders")
    if is_dicom_dir(folder):
        return [Case(folder.name, [folder])]
    images = [f for f in entries if _is_image(f)]
    tagged = [f for f in images if re.search(r"_\d{4}$", case_name(f))]
    if tagged:  # nnU-Net
        return _group_files(tagged, channels)
    cases = []
    order = brats_channel_order(list(channels))  # the model's channels as BraTS channels, if they are
    for sub in (d for d in entries if d.is_dir()):  # BraTS: CASE/CASE_<channel>.nii.gz
        found = brats_case_files(sub) if order is not None else None
        if found is not None:  # BraTS 2018-2021 (_t1 _t1ce _t2 _flair) or 2023 (-t1n -t1c -t2w -t2f) files,
            # in the model's channel order (e.g. MSD Task01's FLAIR, T1w, t1gd, T2w)
            cases.append(Case(sub.name, [found[0][i] for i in order]))
            continue
        files = [f for f in sorted(sub.iterdir()) if _is_image(f) and not case_name(f).lower().endswith("_seg")
                 and channel_tag(f, channels)]
        if files:
            cases.append(_ordered(sub.name, files, channels))
    cases += _group_files(images, channels)  # a plain folder of image files (MSD imagesTs/): one case per file
    if not cases:
        raise MedsegError(f"{folder}: not a DICOM series, an nnU-Net folder (CASE_0000.nii.gz ...), a folder of "
                          f"image files ({', '.join(FILE_SUFFIXES)}) or BraTS case folders "
                          f"(CASE/CASE_<channel>.nii.gz with channels {', '.join(channels)}); give one of those")
    return cases


def collect_cases(inputs: Sequence[PathLike], channels: Sequence[str],
                  channels_per_case: int | None = None) -> list[Case]:
    """The cases named by the command line's inputs (files and folders), each with a distinct name.
    ``channels_per_case`` groups consecutive files instead of reading the grouping from the file names."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise MedsegError("no input given; give image files, folders of them or DICOM series folders")
    for p in paths:
        if not p.exists():
            raise MedsegError(f"{p}: file not found")
    files = [p for p in paths if not p.is_dir()]
    cases = [c for p in paths if p.is_dir() for c in _folder_cases(p, channels)]
    if channels_per_case:
        if len(files) % channels_per_case:
            raise MedsegError(f"--channels-per-case {channels_per_case}: the {len(files)} file(s) given do not "
                              f"split into cases of {channels_per_case} channel files; give {channels_per_case} "
                              f"files per case, in channel order")
        for i in range(0, len(files), channels_per_case):
            group = files[i:i + channels_per_case]
            tags = [channel_tag(f, channels) for f in group]
            cases.append(_ordered(tags[0][0], group, channels) if all(tags) else Case(case_name(group[0]), group))
    else:
        cases += _group_files(files, channels)
    seen: dict[str, Case] = {}
    for c in cases:
        if c.name in seen:
            raise MedsegError(f"{c.inputs[0]}: case name '{c.name}' is also the name of {seen[c.name].inputs[0]}; "
                              "outputs would collide")
        seen[c.name] = c
    return cases
