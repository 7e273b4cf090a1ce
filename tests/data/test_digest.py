"""Content digests: a file edited in place (same size, modification time restored) gets a new digest; an
untouched file is not read again (the memo in the cache folder answers)."""

import hashlib
import json
import os
import time

import nibabel as nib
import numpy as np
import pytest
from monai.data import PersistentDataset

from medseg3d.data import digest as digest_mod
from medseg3d.data.datasets import load_dataset
from medseg3d.data.digest import MEMO_NAME, DigestMemo, add_digests, case_digest, file_digest
from medseg3d.data.synthetic import write_nnunet_dataset
from medseg3d.data.transforms import LoadCased


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two cases whose labels are also stored as .nii (a fixed size: an edit keeps it), written once and left
    to age past the racy window (each test edits its own case)."""
    root = tmp_path_factory.mktemp("digest") / "d"
    write_nnunet_dataset(root, num_training=2, shape=(16, 16, 12), seed=5)
    for lab in (root / "labelsTr").glob("*.nii.gz"):
        nib.save(nib.load(lab), str(lab)[: -len(".gz")])
    time.sleep(digest_mod.RACY_NS / 1e9 + 0.05)
    return root


def case_with_nii_label(root, i):
    case = load_dataset(root).training[i]
    return {**case, "label": case["label"][: -len(".gz")]}


def flip_label_in_place(path):
    """Change label voxels keeping the file's size and restoring its modification time (an uncompressed
    .nii keeps its size whatever the voxels)."""
    st = os.stat(path)
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[data == 2] = 1
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_digest_is_the_sha256_of_the_content(dataset, tmp_path):
    f = dataset / "labelsTr" / "BRATS_001.nii.gz"
    assert file_digest(f, tmp_path / "cache") == hashlib.sha256(f.read_bytes()).hexdigest()


def test_edit_in_place_changes_the_digest_untouched_files_are_not_read_again(dataset, tmp_path):
    cache = tmp_path / "cache"
    case = case_with_nii_label(dataset, 0)
    with DigestMemo(cache) as memo:
        first = memo.case_digest(case)
        assert memo.hashed == 5  # 4 channels + label
    assert (cache / MEMO_NAME).is_file()

    with DigestMemo(cache) as memo:  # a later run: the memo answers, nothing is read
        assert memo.case_digest(case) == first and memo.hashed == 0

    flip_label_in_place(case["label"])
    time.sleep(digest_mod.RACY_NS / 1e9 + 0.05)  # (an old edit: the racy rule is not what catches it)
    with DigestMemo(cache) as memo:
        edited = memo.case_digest(case)
        assert edited != first and memo.hashed == 1  # only the edited label is read again
    assert memo.entries  # (the memo keeps the untouched channel files)
    assert case_digest(case, cache) == edited


def test_racy_files_are_hashed_again(tmp_path):
    """A file changed less than RACY_NS before it was hashed is not remembered (a second write within the
    same clock tick could keep every time stamp)."""
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"abc")
    with DigestMemo(tmp_path / "cache") as memo:
        memo.file_digest(f)
        memo.file_digest(f)
        assert memo.hashed == 2


def test_add_digests_changes_the_persistent_cache_key(dataset, tmp_path):
    """With the digest in each case dict, MONAI's PersistentDataset recomputes a case whose label changed in
    place; without it the stale cached label is served."""
    case = case_with_nii_label(dataset, 1)
    pre = LoadCased(channels=4, label_values=[0, 1, 2, 4])

    def label_sum(items, cache_dir):
        return float(PersistentDataset(items, transform=pre, cache_dir=cache_dir)[0]["label"].sum())

    before = label_sum(add_digests([case], tmp_path / "memo"), tmp_path / "pc")
    plain_before = label_sum([case], tmp_path / "pc_plain")
    flip_label_in_place(case["label"])
    assert label_sum([case], tmp_path / "pc_plain") == plain_before  # stale: the key ignores the content
    after = label_sum(add_digests([case], tmp_path / "memo"), tmp_path / "pc")
    assert after != before
    assert after == float(np.asarray(nib.load(case["label"]).dataobj).sum())


def test_broken_memo_is_ignored_and_rewritten(dataset, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MEMO_NAME).write_text("{broken")
    f = dataset / "labelsTr" / "BRATS_002.nii.gz"
    assert file_digest(f, cache) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert os.path.abspath(f) in json.loads((cache / MEMO_NAME).read_text())
