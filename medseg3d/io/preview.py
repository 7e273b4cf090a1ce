"""PNG previews: axial, coronal and sagittal slices through the largest structure with a coloured overlay.

Display convention (written on the figure): radiological, i.e. the patient's right on the screen's left in the
axial and coronal views, anterior on the left in the sagittal view, superior (axial: anterior) at the top; each
view carries its R/L, A/P, S/I markers. Titles give the grey channel's name and each slice's position as its
voxel index in the file and its RAS coordinate in mm. The legend lists only the classes present in the map.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot, so building or saving
a preview leaves the session's matplotlib backend (a notebook's inline backend, say) as it was.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from .scan import Scan, atomic_write

COLORS = [(0.90, 0.10, 0.10), (0.10, 0.75, 0.20), (0.15, 0.35, 0.95), (0.95, 0.80, 0.10), (0.80, 0.20, 0.85),
          (0.10, 0.80, 0.85), (0.95, 0.50, 0.10), (0.55, 0.35, 0.20)]
CONVENTION = "radiological: patient's right on screen left (axial, coronal); anterior on left (sagittal)"

# per view: (name, RAS axis held fixed, RAS axis of the rows, RAS axis of the columns, markers left/right/top/bottom)
_VIEWS = [("axial", 2, 1, 0, ("R", "L", "A", "P")),
          ("coronal", 1, 2, 0, ("R", "L", "S", "I")),
          ("sagittal", 0, 2, 1, ("A", "P", "S", "I"))]
_AXIS_LETTER = "RAS"


def label_colors(names: dict[str, int]) -> dict[str, tuple[float, float, float]]:
    """The display colour (RGB in 0-1) of each non-background label, in the labels' order: the same in the
    preview, the ``.seg.nrrd``, the DICOM-SEG and the RTSTRUCT. Beyond the first eight, hues are spread by the
    golden ratio so neighbouring labels stay distinguishable."""
    out = {}
    for i, name in enumerate(n for n, v in names.items() if v != 0):
        if i < len(COLORS):
            out[name] = COLORS[i]
        else:
            out[name] = colorsys.hsv_to_rgb((0.11 + 0.618034 * i) % 1.0, 0.75, 0.9)
    return out


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return apply_orientation(array, io_orientation(affine))


def _file_index(ras_index: np.ndarray, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """The file's voxel index of a voxel given by its index in the RAS-reoriented array."""
    ornt = io_orientation(affine)
    v = np.empty(3, dtype=int)
    for axis, (out_axis, flip) in enumerate(ornt.astype(int)):
        r = int(ras_index[out_axis])
        v[axis] = r if flip == 1 else shape[axis] - 1 - r
    return v


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def preview_figure(scan: Scan, labels: np.ndarray, names: dict[str, int], title: str | None = None,
                   channel_names: Sequence[str] | None = None, channel: int | str = -1):
    """A matplotlib ``Figure`` (Agg canvas, not registered with pyplot): axial, coronal and sagittal slices
    through the centre of the largest label present, the channel ``channel`` (index or name; default the
    last) in grey, the labels in colour."""
    from matplotlib import patheffects
    from matplotlib.patches import Patch

    n_channels = scan.data.shape[0]
    cnames = list(channel_names) if channel_names is not None and len(channel_names) == n_channels else None
    if isinstance(channel, str):
        lowered = [c.lower() for c in cnames or []]
        channel = lowered.index(channel.lower()) if channel.lower() in lowered else -1
    channel = int(channel) % n_channels
    grey_name = cnames[channel] if cnames else f"channel {channel}"

    img = _to_ras(scan.data[channel], scan.affine)
    lab = _to_ras(np.asarray(labels), scan.affine)
    ornt = io_orientation(scan.affine)
    vox = np.sqrt((scan.affine[:3, :3] ** 2).sum(0))
    size = np.empty(3)
    size[ornt[:, 0].astype(int)] = vox  # voxel size along R, A, S
    colors = label_colors(names)
    fg = [(name, v) for name, v in names.items() if v != 0]
    counts = {name: int((lab == v).sum()) for name, v in fg}
    present = [(name, v) for name, v in fg if counts[name] > 0]
    center = np.array(img.shape) // 2
    if present:
        big = max(present, key=lambda nv: counts[nv[0]])
        center = np.round(np.argwhere(lab == big[1]).mean(0)).astype(int)
    file_idx = _file_index(center, scan.shape, scan.affine)
    world = (scan.affine @ np.append(file_idx, 1.0))[:3]  # RAS mm of the crosshair voxel
    lo, hi = np.percentile(img[img != 0], [1, 99]) if np.any(img) else (0.0, 1.0)

    fig = _new_figure((12, 4.8))
    axes = fig.subplots(1, 3)
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for ax, (vname, fixed, rows, cols, markers) in zip(axes, _VIEWS):
        index = [slice(None)] * 3
        index[fixed] = center[fixed]
        im2, lb2 = img[tuple(index)], lab[tuple(index)]  # the two remaining RAS axes, in R, A, S order
        # rows: top = the row axis's positive end; columns: left = the column axis's positive end (radiological)
        disp, dlab = im2[::-1, ::-1].T, lb2[::-1, ::-1].T
        aspect = size[rows] / size[cols]
        ax.imshow(disp, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
        rgba = np.zeros(dlab.shape + (4,))
        for name, v in present:
            rgba[dlab == v] = (*colors[name], 0.45)
        ax.imshow(rgba, interpolation="nearest", aspect=aspect)
        file_axis = int(np.flatnonzero(ornt[:, 0].astype(int) == fixed)[0])
        ax.set_title(f"{vname}: {'ijk'[file_axis]} = {file_idx[file_axis]} of {scan.shape[file_axis]}, "
                     f"{_AXIS_LETTER[fixed]} {world[fixed]:+.1f} mm", fontsize=10)
        for text, xy, ha, va in zip(markers, [(0.02, 0.5), (0.98, 0.5), (0.5, 0.98), (0.5, 0.02)],
                                    ["left", "right", "center", "center"], ["center", "center", "top", "bottom"]):
            ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=12,
                    fontweight="bold", path_effects=outline)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=colors[n], label=f"{n} ({v})") for n, v in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    else:
        fig.text(0.5, 0.04, "no labelled structure in this map", ha="center", fontsize=10)
    fig.suptitle(f"{title or scan.name} - grey: {grey_name}")
    fig.text(0.5, 0.895, CONVENTION, ha="center", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.08, 1, 0.9))
    return fig


def save_preview(scan: Scan, labels: np.ndarray, names: dict[str, int], path: str | Path,
                 title: str | None = None, channel_names: Sequence[str] | None = None) -> Path:
    """Write the preview PNG atomically."""
    fig = preview_figure(scan, labels, names, title, channel_names)
    return atomic_write(path, preview_writer(fig))


def preview_writer(fig, dpi: int = 90):
    """``write(path)`` saving ``fig`` as PNG, for :func:`~medseg3d.io.scan.atomic_write_all`."""
    return lambda path: fig.savefig(path, dpi=dpi, format="png")
