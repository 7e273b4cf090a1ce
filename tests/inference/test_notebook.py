"""`Segmenter.show()` in a real Jupyter kernel: with `%matplotlib inline`, the Figure it returns is drawn as a PNG
when it is a cell's last expression, an ordinary pyplot figure afterwards is drawn too, and the backend is still
the inline one (medseg3d builds its figures on the Agg canvas and never switches backends). Runs a notebook with
nbclient on a fresh ipykernel (slow: starting the kernel and importing torch take a while)."""

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "tests" / "fixtures" / "checkpoint_v1.pt"
SCAN = REPO / "data_samples" / "imagesTs" / "BRATS_007.nii.gz"

CELLS = [
    # 0: the inline backend, medseg3d from this repository
    "%matplotlib inline\n"
    "import matplotlib\n"
    "backend_before = matplotlib.get_backend()\n"
    "import medseg3d\n"
    "import sys\n"
    "print(backend_before)\n"
    "print(medseg3d.__file__)\n"
    "print(sys.executable)",
    # 1: the Segmenter's figure as the cell's last expression
    f"seg = medseg3d.Segmenter.from_checkpoint({str(V1)!r}, device='cpu')\n"
    f"seg.show({str(SCAN)!r})",
    # 2: the backend after show(), and pyplot does not hold medseg3d's figure
    "import matplotlib.pyplot as plt\n"
    "print(matplotlib.get_backend())\n"
    "print(plt.get_fignums())",
    # 3: an ordinary pyplot figure
    "plt.figure(figsize=(3, 2))\n"
    "plt.plot([0, 1, 4, 9])\n"
    "plt.title('ordinary');",
]


def _pngs(cell) -> list[str]:
    return [o["data"]["image/png"] for o in cell.outputs
            if o.get("output_type") in ("execute_result", "display_data") and "image/png" in o.get("data", {})]


def _stdout(cell) -> list[str]:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout").splitlines()


@pytest.mark.slow
def test_show_draws_inline_and_leaves_the_backend_alone():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_path  # the kernel inherits it: this repository's medseg3d
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    errors = [o for c in nb.cells for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors
    backend, module, python = _stdout(nb.cells[0])
    assert "inline" in backend
    assert Path(module).resolve().is_relative_to(REPO)
    assert Path(python).resolve() == Path(sys.executable).resolve()  # ipykernel's native kernel: this venv
    pngs = _pngs(nb.cells[1])
    assert len(pngs) == 1 and len(pngs[0]) > 1000  # the overlay figure, drawn once
    after, fignums = _stdout(nb.cells[2])
    assert after == backend  # still the inline backend
    assert fignums == "[]"  # medseg3d's figure is not registered with pyplot (no second drawing, no leak)
    assert len(_pngs(nb.cells[3])) == 1  # an ordinary pyplot figure still shows

