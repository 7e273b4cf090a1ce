"""Files written through the atomic writer appear together, never half-written, and with the permissions of a
file created normally (0666 less the umask), not the temporary file's private 0600: a PACS sender or a
colleague sharing the project folder must be able to read them."""

import os
import stat

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import make_affine, phantom

from medseg3d.io.nifti import atomic_save
from medseg3d.io.readers import read_scan
from medseg3d.io.scan import atomic_write, atomic_write_all, current_umask
from medseg3d.io.writers import image_writer, probabilities_writer, write_image


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_outputs_get_the_umask_permissions(tmp_path, umask):
    expected = 0o666 & ~umask
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(phantom((8, 8, 8)), make_affine("LPS", (1, 1, 2))), src)
    scan = read_scan(src)
    labels = (scan.data[0] > 100).astype(np.uint8)
    out = tmp_path / "out"
    written = atomic_write_all({
        out / "case.nii.gz": image_writer(labels, scan, "nifti"),
        out / "case.nrrd": image_writer(labels, scan, "nrrd"),
        out / "case.mha": image_writer(labels, scan, "mha"),
        out / "case_probs.npz": probabilities_writer(np.zeros((2, 8, 8, 8), np.float32), scan, {"bg": 0, "x": 1}),
        out / "case.json": lambda tmp: open(tmp, "w").write("{}"),
    })
    for p in written:
        assert mode(p) == expected, (p.name, oct(mode(p)))
    assert mode(write_image(labels, scan, out / "single.nii.gz")) == expected
    assert mode(atomic_save(nib.load(src), out / "copy.nii.gz")) == expected
    ckpt = atomic_write(out / "model.pt", lambda tmp: torch.save({"w": torch.zeros(2)}, tmp))  # as checkpoints are
    assert mode(ckpt) == expected
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_writer_that_replaces_its_temporary_file_gets_them_too(tmp_path, umask):
    def replace(tmp):  # e.g. a library writing its own temporary file and renaming it over ours
        other = tmp_path / "other"
        other.write_text("x")
        os.chmod(other, 0o600)
        os.replace(other, tmp)

    assert mode(atomic_write(tmp_path / "r.txt", replace)) == 0o666 & ~umask


def test_a_failing_writer_leaves_nothing(tmp_path):
    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_all({tmp_path / "a.txt": lambda tmp: open(tmp, "w").write("a"), tmp_path / "b.txt": fail})
    assert list(tmp_path.iterdir()) == []
