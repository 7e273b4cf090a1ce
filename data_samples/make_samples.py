"""Regenerate the shipped sample dataset in data_samples/ (run from the repository root):

    python data_samples/make_samples.py

An MSD-style dataset of BraTS-like phantoms (medseg3d.data.synthetic): 6 training and 2 test cases, each a 4D
int16 image (T1, T1ce, T2, FLAIR) plus a uint8 label (0/1/2/4), with a reference label for every test case in
labelsTs/ so the demo can score a held-out scan. The geometry varies as scanners produce it (LPS, RAS and
other axis orders, a sagittally stored case, an anisotropic thick-slice case, a slightly oblique case) over
the same ~192 mm field of view. The output is deterministic: the same bytes on every run.

``domain_b/`` is a second, differently shaped data set for multi-domain training (configs/u2net_multidomain.yaml):
nnU-Net v2 raw layout, 2 channels (T2, FLAIR), 2 labels (background, lesion = the whole tumour), 4 training
and 1 test case of 40 voxels at 4.8 mm.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import json

import nibabel as nib
import numpy as np

from medseg3d.data.synthetic import make_brats_phantom, to_nifti, write_msd_dataset

HERE = Path(__file__).resolve().parent
SEED = 2024
NUM_TRAINING, NUM_TEST = 6, 2
# Per case (training, then test): grid shape and spacing along R, A, S (mm), stored axis code, oblique tilt.
CASES = [
    ((48, 48, 48), (4.0, 4.0, 4.0), "RAS", 0.0),
    ((56, 56, 56), (3.5, 3.5, 3.5), "LPS", 0.0),
    ((64, 64, 32), (3.0, 3.0, 6.0), "RAS", 0.0),  # anisotropic: thick axial slices
    ((48, 48, 48), (4.0, 4.0, 4.0), "LAS", 0.0),
    ((52, 52, 52), (3.7, 3.7, 3.7), "ASL", 0.0),  # stored sagittally (axes: A, S, L)
    ((48, 48, 48), (4.0, 4.0, 4.0), "RAI", 6.0),  # slightly oblique (tilted about left-right)
    ((56, 56, 56), (3.5, 3.5, 3.5), "LPS", 0.0),  # test cases
    ((64, 64, 40), (3.0, 3.0, 5.0), "RAS", 0.0),
]


def make_domain_b(root: Path = HERE / "domain_b", seed: int = 77, n_train: int = 4, n_test: int = 1) -> list[Path]:
    """The second domain: nnU-Net v2 raw layout, T2 + FLAIR, labels background/lesion."""
    shutil.rmtree(root, ignore_errors=True)
    written = []
    shape, spacing = (40, 40, 40), (4.8, 4.8, 4.8)
    for i in range(n_train + n_test):
        image, label = make_brats_phantom(shape, seed * 100 + i, spacing)
        case, split = f"LESION_{i + 1:03d}", "Tr" if i < n_train else "Ts"
        for c, ch in enumerate((2, 3)):  # T2, FLAIR
            path = root / f"images{split}" / f"{case}_{c:04d}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(to_nifti(image[ch], spacing, "LPS", dtype=np.int16), str(path))
            written.append(path)
        path = root / f"labels{split}" / f"{case}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(to_nifti((label > 0).astype(np.uint8), spacing, "LPS", dtype=np.uint8), str(path))
        written.append(path)
    meta = {"name": "lesion phantoms (domain B)", "channel_names": {"0": "T2", "1": "FLAIR"},
            "labels": {"background": 0, "lesion": 1}, "numTraining": n_train, "file_ending": ".nii.gz",
            "licence": "CC0", "description": f"medseg3d.data.synthetic phantoms, seed {seed}: whole tumour as one label"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return written + [root / "dataset.json"]


def main() -> None:
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
    shapes, spacings, orientations, obliques = zip(*CASES)
    written = write_msd_dataset(HERE, NUM_TRAINING, NUM_TEST, shape=list(shapes), spacing=list(spacings),
                                orientation=list(orientations), oblique_deg=list(obliques), seed=SEED,
                                test_labels=True)
    for path in written:
        if path.name.endswith(".nii.gz") and path.parent.name.startswith("images"):
            img = nib.load(path)
            zooms = ", ".join(f"{z:g}" for z in img.header.get_zooms()[:3])
            print(f"{path.relative_to(HERE)}: {img.shape} ({zooms}) mm, {''.join(nib.aff2axcodes(img.affine))}")
    written += make_domain_b()
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"{len(written)} files written; data_samples/ is {total / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
