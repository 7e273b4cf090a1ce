"""Cross-validation splits: medseg3d's seeded folds, nnU-Net v2's exact folds, and splits files (ours or
nnU-Net's splits_final.json) checked against the dataset's case ids."""

import json

import pytest

from medseg3d.data.datasets import load_splits, make_splits, validate_splits
from medseg3d.errors import MedsegError

# Validation folds computed once with nnU-Net v2's rule (nnunetv2.utilities.crossval_split.
# generate_crossval_split, called by nnUNetTrainer.do_split on np.sort(identifiers)): scikit-learn 1.9.1
# KFold(n_splits=5, shuffle=True, random_state=12345).split(sorted ids). Stored as data: no scikit-learn here.
NNUNET_VAL_FOLDS = {
    # 7 ids given unsorted, mixed case: sorted by code point ('B' < 'Liver_3' < 'a' < 'liver_1' ...)
    ("liver_10", "liver_2", "liver_1", "Liver_3", "liver_20", "a", "B"): [
        ["liver_1", "liver_20"], ["B", "liver_10"], ["Liver_3"], ["liver_2"], ["a"]],
    tuple(f"case_{i:03d}" for i in range(10)): [
        ["case_000", "case_007"], ["case_003", "case_009"], ["case_004", "case_006"], ["case_001", "case_008"],
        ["case_002", "case_005"]],
    tuple(f"case_{i:03d}" for i in range(13)): [
        ["case_000", "case_007", "case_009"], ["case_003", "case_006", "case_010"],
        ["case_008", "case_011", "case_012"], ["case_001", "case_004"], ["case_002", "case_005"]],
    tuple(f"x{i:02d}" for i in range(20)): [
        ["x03", "x08", "x13", "x16"], ["x00", "x10", "x12", "x15"], ["x06", "x07", "x11", "x17"],
        ["x09", "x14", "x18", "x19"], ["x01", "x02", "x04", "x05"]],
    # the data_samples case ids
    tuple(f"BRATS_{i:03d}" for i in range(1, 7)): [
        ["BRATS_004", "BRATS_006"], ["BRATS_005"], ["BRATS_001"], ["BRATS_002"], ["BRATS_003"]],
}
# KFold(n_splits=3, shuffle=True, random_state=12345) on p0..p7
NNUNET_3_FOLDS = [["p3", "p4", "p7"], ["p0", "p1", "p6"], ["p2", "p5"]]


@pytest.mark.parametrize("ids", list(NNUNET_VAL_FOLDS))
def test_nnunet_scheme_reproduces_nnunets_folds(ids):
    expected = NNUNET_VAL_FOLDS[ids]
    for seed in (0, 12345, 7):  # nnU-Net's seed is fixed: train.seed does not change its folds
        splits = make_splits(list(ids), 5, seed=seed, scheme="nnunet")
        assert [s["val"] for s in splits] == expected
        for s, val in zip(splits, expected):
            assert s["train"] == sorted(set(ids) - set(val))


def test_nnunet_scheme_with_other_fold_counts():
    ids = [f"p{i}" for i in range(8)]
    assert [s["val"] for s in make_splits(ids, 3, seed=0, scheme="nnunet")] == NNUNET_3_FOLDS
    with pytest.raises(MedsegError, match=r"nnU-Net's 5-fold split needs at least 5 training cases, got 4"):
        make_splits(ids[:4], 5, seed=0, scheme="nnunet")


def test_medseg3d_scheme_is_seeded_disjoint_and_covers():
    ids = [f"c{i}" for i in range(11)]
    s1, s2 = make_splits(ids, 5, seed=0), make_splits(ids, 5, seed=0)
    assert s1 == s2 and s1 != make_splits(ids, 5, seed=1)
    assert s1 == make_splits(ids, 5, seed=0, scheme="medseg3d")
    assert sorted(i for s in s1 for i in s["val"]) == sorted(ids)
    for s in s1:
        assert not set(s["train"]) & set(s["val"]) and set(s["train"]) | set(s["val"]) == set(ids)
    # unchanged from earlier releases: runs made before keep their folds
    assert [s["val"] for s in make_splits([f"BRATS_{i:03d}" for i in range(1, 7)], 5, seed=0)] == [
        ["BRATS_002", "BRATS_004"], ["BRATS_003"], ["BRATS_006"], ["BRATS_005"], ["BRATS_001"]]


def test_duplicate_ids_and_bad_scheme_are_errors():
    with pytest.raises(MedsegError, match=r"case id\(s\) \['b'\] appear more than once"):
        make_splits(["a", "b", "b", "c"], 2, seed=0)
    with pytest.raises(MedsegError, match="unknown split scheme 'sklearn'"):
        make_splits(["a", "b"], 2, seed=0, scheme="sklearn")


def test_nnunet_splits_final_json_is_accepted_as_is(tmp_path):
    ids = [f"case_{i:03d}" for i in range(10)]
    nnunet_file = [{"train": s["train"], "val": s["val"]} for s in make_splits(ids, 5, 0, scheme="nnunet")]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(nnunet_file))
    assert load_splits(path, ids) == nnunet_file
    assert load_splits(path) == nnunet_file  # without ids: only the structure and the folds are checked


@pytest.mark.parametrize("splits, message", [
    ([{"train": ["a", "b"], "val": ["zz"]}], r"fold 0 names case id\(s\) \['zz'\] that the dataset does not have"),
    ([{"train": ["b", "c"], "val": ["a"]}, {"train": ["c"], "val": ["a", "b"]}],
     "case 'a' is in the validation set of folds 0 and 1; each case may be validated in one fold only"),
    ([{"train": ["a", "b"], "val": ["b", "c"]}], r"fold 0 has case id\(s\) \['b'\] in both 'train' and 'val'"),
    ([{"train": ["a"], "val": ["b", "b"]}], "case 'b' is listed twice in the validation set of fold 0"),
    ({"train": ["a"], "val": ["b"]}, "splits must be a JSON list of"),
    ([{"train": ["a"]}], "splits must be a JSON list of"),
    ([], "splits must be a JSON list of"),
])
def test_bad_splits_files_are_errors_naming_the_file(tmp_path, splits, message):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits))
    with pytest.raises(MedsegError, match=f"^{path}: {message}"):
        load_splits(path, ["a", "b", "c"])


def test_missing_or_broken_splits_file(tmp_path):
    with pytest.raises(MedsegError, match="splits file not found"):
        load_splits(tmp_path / "nope.json")
    (tmp_path / "s.json").write_text("[{")
    with pytest.raises(MedsegError, match="not valid JSON"):
        load_splits(tmp_path / "s.json")
    assert validate_splits([{"train": ["a"], "val": ["b"]}], ["a", "b"]) == [{"train": ["a"], "val": ["b"]}]
