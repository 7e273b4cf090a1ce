"""BraTS case folders: how their files are named (2018-2021 and 2023 releases) and which channel names a model
may carry for each BraTS channel. Training (:mod:`medseg3d.data.datasets`) and inference
(:mod:`medseg3d.io.cases`) find a case's files through the same helpers."""

from __future__ import annotations

from pathlib import Path

from ..errors import MedsegError

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
