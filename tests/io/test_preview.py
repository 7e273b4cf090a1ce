"""Preview PNGs: radiological display with R/L, A/P, S/I markers (checked on where a structure placed in the
patient's right-anterior-superior lands on screen, for LPS, RAS and oblique inputs), the grey channel's name
and slice positions in the titles, a legend of the classes present only, and no change to matplotlib's backend
(no pyplot)."""

import subprocess
import sys
import textwrap

import matplotlib
import nibabel as nib
import numpy as np
import pytest
from helpers import make_affine
from matplotlib.backends.backend_agg import FigureCanvasAgg

from medseg3d.io.preview import CONVENTION, label_colors, preview_figure, save_preview
from medseg3d.io.readers import scan_from_image

SHAPE = (40, 36, 30)
NAMES = {"background": 0, "head": 1, "blob": 2, "absent": 3}


def ras_phantom():
    """In RAS voxel order (1 mm, origin at the centre): a head ellipsoid (1) and a blob (2) in the patient's
    right, anterior, superior octant."""
    x, y, z = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in SHAPE], indexing="ij")
    lab = np.zeros(SHAPE, np.int16)
    lab[(x / 18) ** 2 + (y / 16) ** 2 + (z / 13) ** 2 < 1] = 1
    lab[(x - 8) ** 2 + (y - 7) ** 2 + (z - 5) ** 2 < 16] = 2
    affine = np.eye(4)
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2
    return lab, affine


def as_orientation(codes, oblique=0.0):
    """The same anatomy stored in another voxel order (the world position of every voxel is kept)."""
    lab, ras_affine = ras_phantom()
    target = make_affine(codes, (1.0, 1.0, 1.0), oblique, origin=(0, 0, 0))
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(ras_affine),
                                           nib.orientations.io_orientation(target))
    data = nib.orientations.apply_orientation(lab, ornt)
    affine = ras_affine @ nib.orientations.inv_ornt_aff(ornt, lab.shape)
    if oblique:
        t = np.deg2rad(oblique)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        affine = rot @ affine
    image = np.where(data > 0, 100.0, 0.0) + np.where(data == 2, 50.0, 0.0)
    return scan_from_image(np.stack([image * 0.5, image]), affine), data


@pytest.mark.parametrize("codes,oblique", [("RAS", 0.0), ("LPS", 0.0), ("LAI", 0.0), ("LPS", 10.0)])
def test_markers_and_where_the_anatomy_lands(codes, oblique):
    scan, labels = as_orientation(codes, oblique)
    labels = np.where(labels == 2, 2, 0)  # the slices go through the blob; the head stays in the grey image
    fig = preview_figure(scan, labels, NAMES, title="case", channel_names=["T1", "FLAIR"])
    assert isinstance(fig.canvas, FigureCanvasAgg)
    expected_markers = {"axial": ["R", "L", "A", "P"], "coronal": ["R", "L", "S", "I"],
                        "sagittal": ["A", "P", "S", "I"]}
    blob_rgb = np.array(label_colors(NAMES)["blob"])
    for ax, view in zip(fig.axes, ["axial", "coronal", "sagittal"]):
        assert ax.get_title().startswith(view)
        texts = {t.get_text(): t.get_position() for t in ax.texts}
        left, right, top, bottom = expected_markers[view]
        assert set(texts) == {left, right, top, bottom}
        assert texts[left][0] < 0.5 < texts[right][0] and texts[top][1] > 0.5 > texts[bottom][1]
        overlay = ax.images[1].get_array()  # rows top to bottom, columns left to right on screen
        blob = np.argwhere(np.all(np.isclose(overlay[..., :3], blob_rgb), axis=-1) & (overlay[..., 3] > 0))
        assert len(blob)
        row, col = blob.mean(0) / np.array(overlay.shape[:2])  # the head (and grid) centre is on screen centre
        # the blob is to the patient's right (axial, coronal: screen left), anterior (axial: top; sagittal:
        # left) and superior (coronal, sagittal: top)
        assert row < 0.5 and col < 0.5, (view, row, col)


def test_titles_name_the_channel_and_the_slice_positions():
    scan, labels = as_orientation("LPS")
    fig = preview_figure(scan, labels, NAMES, title="case", channel_names=["T1", "FLAIR"])
    assert fig._suptitle.get_text() == "case - grey: FLAIR"
    texts = [t.get_text() for t in fig.texts]
    assert CONVENTION in texts and "radiological" in CONVENTION
    # the crosshair is the centre of the largest label (the head, around the world origin)
    axial, coronal, sagittal = (ax.get_title() for ax in fig.axes)
    centre = np.round(np.argwhere(labels == 1).mean(0)).astype(int)
    world = scan.affine @ np.append(centre, 1)
    assert axial == f"axial: k = {centre[2]} of 30, S {world[2]:+.1f} mm"
    assert coronal == f"coronal: j = {centre[1]} of 36, A {world[1]:+.1f} mm"
    assert sagittal == f"sagittal: i = {centre[0]} of 40, R {world[0]:+.1f} mm"
    fig = preview_figure(scan, labels, NAMES, channel_names=["T1", "FLAIR"], channel="t1")
    assert fig._suptitle.get_text().endswith("grey: T1")
    fig = preview_figure(scan, labels, NAMES)
    assert fig._suptitle.get_text().endswith("grey: channel 1")


def test_legend_lists_only_the_classes_present():
    scan, labels = as_orientation("RAS")
    fig = preview_figure(scan, labels, NAMES)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["head (1)", "blob (2)"]
    fig = preview_figure(scan, np.zeros_like(labels), NAMES)
    assert not fig.legends and "no labelled structure in this map" in [t.get_text() for t in fig.texts]


def test_previews_leave_the_backend_alone_and_render_png(tmp_path):
    before = matplotlib.get_backend()
    scan, labels = as_orientation("LPS")
    path = save_preview(scan, labels, NAMES, tmp_path / "p.png", channel_names=["T1", "FLAIR"])
    assert matplotlib.get_backend() == before
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (1080, 432)  # 12 x 4.8 inches at 90 dpi

    # a fresh interpreter with another backend selected (as a notebook's inline backend would be): building and
    # saving a preview neither imports pyplot nor switches the backend
    script = textwrap.dedent(f"""
        import sys, matplotlib
        from medseg3d.io.preview import preview_figure
        from medseg3d.io.readers import scan_from_image
        import numpy as np
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        lab = np.zeros((8, 8, 8), np.int16); lab[2:5, 2:5, 2:5] = 1
        fig = preview_figure(scan_from_image(lab.astype(np.float32), np.eye(4)), lab, {{"background": 0, "x": 1}})
        fig.savefig({str(tmp_path / "q.png")!r}, format="png")
        assert "matplotlib.pyplot" not in sys.modules
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        print("ok")
    """)
    env = {"MPLBACKEND": "svg", "PYTHONPATH": ":".join(sys.path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
