"""dciodvfy (dicom3tools: ``apt-get install dicom3tools``) finds no error in the DICOM-SEG and RTSTRUCT written
for an MR series, for an anonymised CT series whose Study/Series/Frame of Reference UIDs were blanked, nor in the
series ``write_dicom_series`` makes."""

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from helpers import make_affine, phantom

from medseg3d.io.dicom import write_dicom_series
from medseg3d.io.readers import read_scan
from medseg3d.io.scan import atomic_write
from medseg3d.io.writers import check_format, label_writer

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")]
NAMES = {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4, "liver": 5}


def errors(path):
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("modality,anonymised", [("MR", False), ("CT", True)])
def test_dciodvfy_finds_no_error(tmp_path, modality, anonymised):
    files = write_dicom_series(phantom((30, 26, 12)), make_affine("LAS", (1.0, 1.3, 2.0), 17.0), tmp_path / "s",
                               modality=modality)
    assert errors(files[0]) == []
    if anonymised:
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = "", ""
            del ds.FrameOfReferenceUID
            ds.save_as(f)
    scan = read_scan(tmp_path / "s")
    data = scan.data[0]
    lab = np.zeros(scan.shape, np.uint8)
    lab[data > 100] = 2
    lab[data > 150] = 4
    lab[data > 190] = 1
    for fmt in ("dicom-seg", "rtstruct"):
        assert len(check_format(fmt, scan)) == (1 if anonymised and fmt == "dicom-seg" else 0)
        out = atomic_write(tmp_path / f"{fmt}.dcm", label_writer(lab, scan, fmt, NAMES, "0.1"))
        assert errors(out) == [], fmt
