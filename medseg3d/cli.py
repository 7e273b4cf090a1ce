"""The ``medseg3d`` command. Thin: it parses, calls the Python API, and turns a MedsegError into one line on
stderr and exit code 1. Heavy imports happen inside the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Volumetric-first 3D medical image segmentation (PyTorch + MONAI).")


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    from .errors import MedsegError

    try:
        return fn(*args, **kwargs)
    except MedsegError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted", 130)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override, e.g. --set train.epochs=5"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run folder (default: OUTPUT_DIR/NAME_TIME)"),
):
    """Train a network from a config; writes a run folder with checkpoints, logs and the resolved config."""
    from .engine.trainer import train as _train

    out = _run(_train, config, set_ or [], run_dir)
    typer.echo(f"done: {out}")


@app.command()
def infer(
    scans: List[Path] = typer.Argument(..., help="NIfTI scans (a 4D file, or with --channels-per-case N, N files per case)"),
    model: Path = typer.Option(..., "--model", "-m", help="checkpoint file or run folder"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    overlap: Optional[float] = typer.Option(None, help="sliding-window overlap (default: the checkpoint's)"),
    sw_batch_size: Optional[int] = typer.Option(None, "--sw-batch-size", help="windows per forward pass"),
    preview: bool = typer.Option(True, help="also write a PNG overlay per case"),
    channels_per_case: int = typer.Option(1, "--channels-per-case", help="consecutive files that form one case"),
):
    """Segment scans; each label map is written in its scan's exact geometry as OUTPUT/CASE.nii.gz."""
    _run(_infer, scans, model, output, device, overlap, sw_batch_size, preview, channels_per_case)


def _infer(scans, model, output, device, overlap, sw_batch_size, preview, channels_per_case):
    from .errors import MedsegError
    from .inference.segmenter import Segmenter
    from .io.nifti import atomic_save, case_name
    from .io.preview import save_preview

    if len(scans) % channels_per_case:
        raise MedsegError(f"{len(scans)} files do not split into cases of {channels_per_case} channel files")
    cases = [scans[i:i + channels_per_case] for i in range(0, len(scans), channels_per_case)]
    seg = Segmenter.from_checkpoint(model, device=device)
    if overlap is not None:
        seg.config.infer.overlap = overlap
    if sw_batch_size is not None:
        seg.config.infer.sw_batch_size = sw_batch_size
    inputs = {Path(p).resolve() for c in cases for p in c}
    for files in cases:
        name = case_name(files[0])
        if channels_per_case > 1:
            name = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        dest = output / f"{name}.nii.gz"
        if dest.resolve() in inputs:
            raise MedsegError(f"{dest}: would overwrite an input scan; choose another --output folder")
        scan = seg.read([str(f) for f in files])
        img = seg.predict_scan(scan)
        atomic_save(img, dest)
        line = f"{name}: wrote {dest} ({seg.last_runtime:.1f}s on {seg.device})"
        if preview:
            png = save_preview(scan, img.get_fdata().astype(int), seg.labels, output / f"{name}.png")
            line += f", preview {png}"
        typer.echo(line)


@app.command()
def models(dims: Optional[int] = typer.Option(None, help="only nets that support this spatial_dims")):
    """List the networks: dims, parameters, forward GFLOPs and paper."""
    from .models.summary import format_table, model_table

    typer.echo(format_table(model_table(dims)))


@app.command("check-config")
def check_config(
    config: Path = typer.Argument(...),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s"),
):
    """Validate a config and print it resolved (defaults filled in, paths absolute)."""
    from .config import dump_config, load_config

    typer.echo(dump_config(_run(load_config, config, set_ or [])), nl=False)


def main() -> None:  # pragma: no cover
    app(prog_name="medseg3d")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
