"""Batch inference over many cases keeps memory flat (one case at a time, nothing kept from earlier cases)."""

from pathlib import Path

import nibabel as nib
import numpy as np

from helpers import make_affine, phantom, tiny_checkpoint

from medseg3d.inference.batch import segment_files


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def test_fifty_cases_keep_memory_flat(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(50):
        img = phantom((20, 18, 16)) * (1 + 0.01 * i)
        nib.save(nib.Nifti1Image(img, make_affine("RAS", (3, 3, 3))), scans / f"case{i:02d}.nii.gz")
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    rss: list[float] = []

    def log(line: str) -> None:
        if ": wrote " in line:
            rss.append(_rss_mb())

    result = segment_files([scans], ckpt, tmp_path / "out", device="cpu", preview=True, report=True, log=log)
    assert result.ok and len(result.written) == 50 and len(rss) == 50
    assert len(list((tmp_path / "out").glob("case*.nii.gz"))) == 50
    growth = max(rss[10:]) - rss[9]
    assert growth < 40, f"memory grew by {growth:.0f} MB over 40 cases: {[round(r) for r in rss]}"
