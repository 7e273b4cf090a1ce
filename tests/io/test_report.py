"""Per-label statistics (voxels, volume, 26-connected components, mean/median/std of each channel inside the
label) equal numpy's and scikit-image's on the same masks; the JSON report holds them; the CSV table over cases
reads back."""

import csv
import json

import numpy as np
import pytest
from skimage.measure import label as cc_label

from medseg3d.io.readers import scan_from_image
from medseg3d.io.report import case_report, label_statistics, statistics, statistics_rows, statistics_table

NAMES = {"background": 0, "liver": 1, "lesion": 3, "spleen": 7}  # spleen: absent


def case(seed=0):
    rng = np.random.default_rng(seed)
    shape = (24, 20, 16)
    labels = np.zeros(shape, np.uint8)
    labels[2:10, 3:12, 2:9] = 1
    labels[14:18, 4:8, 10:14] = 1  # a second liver component
    labels[5:7, 5:7, 4:6] = 3  # a lesion inside the liver
    labels[20, 15, 12] = 3  # and a single voxel elsewhere
    labels[21, 16, 13] = 3  # touching it by a corner only: the same 26-connected component
    data = rng.normal(100, 20, (2,) + shape).astype(np.float32)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    return scan_from_image(data, affine), labels


def test_statistics_equal_numpy_on_the_same_masks():
    scan, labels = case()
    stats = statistics(scan, labels, NAMES, ["T1", "FLAIR"])
    assert list(stats) == list(NAMES)
    vv = 0.8 * 0.9 * 2.5
    for name, value in NAMES.items():
        mask = labels == value
        s = stats[name]
        assert s["value"] == value and s["voxels"] == int(mask.sum())
        assert s["volume_ml"] == pytest.approx(mask.sum() * vv / 1000)
        assert s["components"] == (cc_label(mask, connectivity=3, return_num=True)[1] if mask.any() else 0)
        for c, cname in enumerate(["T1", "FLAIR"]):
            inside = scan.data[c][mask].astype(np.float64)
            got = s["intensity"][cname]
            if mask.any():
                assert got["mean"] == pytest.approx(inside.mean(), rel=1e-9)
                assert got["median"] == pytest.approx(np.median(inside), rel=1e-9)
                assert got["std"] == pytest.approx(inside.std(), rel=1e-9)
            else:
                assert got == {"mean": None, "median": None, "std": None}
    assert stats["liver"]["components"] == 2 and stats["lesion"]["components"] == 2
    assert stats["spleen"]["voxels"] == 0
    # channels unnamed: "0", "1"; without a scan: no intensity, as the report had before
    assert list(statistics(scan, labels, NAMES)["liver"]["intensity"]) == ["0", "1"]
    without = {n: {k: v for k, v in s.items() if k != "intensity"} for n, s in stats.items()}
    assert label_statistics(labels, NAMES, scan.voxel_volume_mm3) == without


def test_report_carries_intensities_and_is_strict_json():
    scan, labels = case()
    report = case_report(scan, labels, NAMES, runtime_s=1.23456, device="cpu", model={"name": "unet"},
                         outputs=["a.nii.gz"], tta=False, passes=1, channel_names=["T1", "FLAIR"])
    text = json.dumps(report, allow_nan=False)
    back = json.loads(text)
    assert back["labels"]["lesion"]["intensity"]["FLAIR"]["median"] == pytest.approx(
        float(np.median(scan.data[1][labels == 3])))
    assert back["labels"]["spleen"]["intensity"]["T1"]["mean"] is None
    assert back["runtime_s"] == 1.235
    plain = case_report(scan, labels, NAMES, runtime_s=1.0, device="cpu", model={}, outputs=[], tta=False,
                        passes=1)
    assert set(plain["labels"]["liver"]) == {"value", "voxels", "volume_ml", "components"}


def test_statistics_table_over_cases(tmp_path):
    rows = []
    for i in range(3):
        scan, labels = case(seed=i)
        rows += statistics_rows(f"case{i}", statistics(scan, labels, NAMES, ["T1", "FLAIR"]))
    statistics_table(rows)(str(tmp_path / "statistics.csv"))
    with open(tmp_path / "statistics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 * len(NAMES)
    assert list(table[0]) == ["case", "label", "value", "voxels", "volume_ml", "components", "T1_mean", "T1_median",
                              "T1_std", "FLAIR_mean", "FLAIR_median", "FLAIR_std"]
    scan, labels = case(seed=2)
    row = next(r for r in table if r["case"] == "case2" and r["label"] == "lesion")
    assert int(row["voxels"]) == int((labels == 3).sum())
    assert float(row["FLAIR_std"]) == pytest.approx(scan.data[1][labels == 3].std(dtype=np.float64), rel=1e-8)
    spleen = next(r for r in table if r["label"] == "spleen")
    assert spleen["T1_mean"] == "nan" and spleen["voxels"] == "0"
