"""Label conventions the schema checks against: the BraTS label values and regions, and the rule that lets
nested regions be written back as labels. Plain Python (the schema layer imports no torch, no MONAI);
:mod:`medseg3d.data.labels` builds the array operations on top.

A *region* is a named set of label values (BraTS: whole tumour WT = {1, 2, 4}, tumour core TC = {1, 4},
enhancing tumour ET = {4}). Writing back, the regions are painted in their configured order (as nnU-Net's
region-based BraTS training does): every voxel of a region gets the region's *write value*, the one label value
of the region that no later region contains (WT − TC → 2, TC − ET → 1, ET → 4).
"""

from __future__ import annotations

from typing import Mapping, Sequence

# name -> label value, background first; the channel order of the BraTS releases
BRATS_CONVENTIONS: dict[str, dict[str, int]] = {
    # BraTS 2018-2021: 1 necrotic/non-enhancing core, 2 peritumoral edema, 4 enhancing tumour
    "2018": {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4},
    # BraTS 2023 (GLI): 1 NCR, 2 SNFH (edema), 3 ET
    "2023": {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 3},
    # MSD Task01_BrainTumour: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
    "msd": {"background": 0, "edema": 1, "non_enhancing": 2, "enhancing": 3},
}


def brats_labels(convention: str) -> dict[str, int]:
    """The label names and values of a BraTS convention ('2018', '2023' or 'msd')."""
    if str(convention) not in BRATS_CONVENTIONS:
        raise ValueError(f"unknown BraTS label convention {convention!r}; valid: {', '.join(BRATS_CONVENTIONS)}")
    return dict(BRATS_CONVENTIONS[str(convention)])


def brats_regions(convention: str) -> dict[str, list[int]]:
    """WT, TC, ET (in this order, the painting order) for a BraTS convention."""
    lab = brats_labels(convention)
    et = lab["enhancing"]
    core = lab.get("necrotic", lab.get("non_enhancing"))
    edema = lab["edema"]
    return {"WT": sorted([core, edema, et]), "TC": sorted([core, et]), "ET": [et]}


def region_write_values(regions: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The label value each region writes when painted in order: the one value of the region that no later
    region contains. Raises ValueError when that is not exactly one value."""
    names = list(regions)
    out = {}
    for i, name in enumerate(names):
        later = set().union(*[set(regions[n]) for n in names[i + 1:]]) if i + 1 < len(names) else set()
        own = sorted(set(regions[name]) - later)
        if len(own) != 1:
            raise ValueError(f"region '{name}' must have exactly one label value that no later region has "
                             f"(to write it back as labels), has {own}; order the regions from the largest "
                             f"to the smallest, e.g. WT, TC, ET")
        out[name] = own[0]
    return out
