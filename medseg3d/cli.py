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
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this folder from its last.pt"),
    budget: Optional[str] = typer.Option(None, "--budget", help="wall-clock limit, e.g. 90s, 10m, 2h (train.budget)"),
):
    """Train a network from a config; writes a run folder with checkpoints, logs and the resolved config."""
    from .engine.trainer import train as _train

    overrides = list(set_ or []) + ([f"train.budget={budget}"] if budget else [])
    if resume is not None and run_dir is not None:
        _fail("give either --resume RUN_DIR or --run-dir, not both")
    out = _run(_train, config, overrides, run_dir, resume)
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
    domain: Optional[str] = typer.Option(None, "--domain", help="multi-domain model: which domain (default: first)"),
):
    """Segment scans; each label map is written in its scan's exact geometry as OUTPUT/CASE.nii.gz."""
    _run(_infer, scans, model, output, device, overlap, sw_batch_size, preview, channels_per_case, domain)


def _infer(scans, model, output, device, overlap, sw_batch_size, preview, channels_per_case, domain=None):
    from .errors import MedsegError
    from .inference.segmenter import Segmenter
    from .io.nifti import atomic_save, case_name
    from .io.preview import save_preview

    if len(scans) % channels_per_case:
        raise MedsegError(f"{len(scans)} files do not split into cases of {channels_per_case} channel files")
    cases = [scans[i:i + channels_per_case] for i in range(0, len(scans), channels_per_case)]
    seg = Segmenter.from_checkpoint(model, device=device, domain=domain)
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
def evaluate(
    pred_dir: Path = typer.Argument(..., help="folder of predicted label maps (NIfTI)"),
    gt_dir: Path = typer.Argument(..., help="folder of reference label maps, matched by file name"),
    labels: Optional[str] = typer.Option(None, "--labels", help="name=value,... (default: values in the references)"),
    regions: Optional[str] = typer.Option(None, "--regions",
                                          help="name=v+v+...,... e.g. WT=1+2+4,TC=1+4,ET=4, or brats (1/2/4), brats2023"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV table (default: PRED_DIR/metrics.csv)"),
    hd95: bool = typer.Option(True, help="also compute HD95 (mm)"),
):
    """Dice and HD95 per case and class/region for two folders, with mean/std rows, as a CSV table."""
    _run(_evaluate, pred_dir, gt_dir, labels, regions, output, hd95)


def _parse_pairs(text: str, what: str, multi: bool):
    from .errors import MedsegError

    out = {}
    for item in [t for t in text.split(",") if t.strip()]:
        if "=" not in item:
            raise MedsegError(f"--{what}: {item!r} must look like name=value")
        name, val = item.split("=", 1)
        try:
            vals = [int(v) for v in val.split("+")]
        except ValueError:
            raise MedsegError(f"--{what}: {val!r} is not an integer label value") from None
        out[name.strip()] = vals if multi else vals[0]
    return out


def _evaluate(pred_dir, gt_dir, labels, regions, output, hd95):
    from .data.labels import brats_regions
    from .engine.metrics import evaluate_folders, summarise, write_table

    lab = _parse_pairs(labels, "labels", False) if labels else None
    if regions in ("brats", "brats2018"):
        reg = brats_regions("2018")
    elif regions == "brats2023":
        reg = brats_regions("2023")
    else:
        reg = _parse_pairs(regions, "regions", True) if regions else None
    rows = evaluate_folders(pred_dir, gt_dir, lab, reg, hd95=hd95)
    out = write_table(rows, output or Path(pred_dir) / "metrics.csv")
    keys = [k for k in rows[0] if k != "case"]
    mean = summarise(rows, keys)[0]
    typer.echo(f"{len(rows)} cases; mean " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items() if k != "case"))
    typer.echo(f"wrote {out}")


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
