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
    from .errors import MedsegError, medseg_cause

    try:
        return fn(*args, **kwargs)
    except MedsegError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except RuntimeError as e:  # a MONAI transform wraps the reader's error
        cause = medseg_cause(e)
        if cause is None:
            raise
        _fail(str(cause))


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
    inputs: List[Path] = typer.Argument(..., help="scans: NIfTI, NRRD or MHA files (one multichannel file or one file "
                                             "per channel: CASE_0000.nii.gz ..., CASE_t1ce.nii.gz ...), DICOM series "
                                             "folders, nnU-Net folders or folders of BraTS case folders"),
    model: List[Path] = typer.Option(..., "--model", "-m", help="checkpoint file, run folder or exported .onnx; "
                                                              "repeat for an ensemble (probabilities averaged)"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="label map format: nifti, nrrd, mha or dicom-seg "
                                                                 "(default: dicom-seg for a DICOM series, else nifti)"),
    tta: bool = typer.Option(False, "--tta", help="test-time augmentation: average over all 8 mirrorings"),
    save_probs: bool = typer.Option(False, "--save-probs", help="also write CASE_probs.npz (float16 probabilities)"),
    save_uncertainty: Optional[str] = typer.Option(None, "--save-uncertainty",
                                                   help="also write CASE_uncertainty: entropy or variance"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    overlap: Optional[float] = typer.Option(None, help="sliding-window overlap (default: the checkpoint's)"),
    sw_batch_size: Optional[int] = typer.Option(None, "--sw-batch-size", help="windows per forward pass"),
    preview: bool = typer.Option(True, help="write CASE.png: three slices with a coloured overlay"),
    report: bool = typer.Option(True, help="write CASE.json: volumes, components, runtime, model"),
    channels_per_case: Optional[int] = typer.Option(None, "--channels-per-case",
                                                    help="group consecutive files into cases of N channel files"),
    min_size_ml: Optional[float] = typer.Option(None, "--min-size-ml", help="remove components smaller than this"),
    largest_component: Optional[bool] = typer.Option(None, "--largest-component/--no-largest-component",
                                                     help="keep the largest component per class"),
    fill_holes: Optional[bool] = typer.Option(None, "--fill-holes/--no-fill-holes", help="fill holes per class"),
    relabel: Optional[str] = typer.Option(None, "--relabel", help="SOURCE:TARGET:ML, relabel a class smaller than ML "
                                                                "(e.g. enhancing:necrotic:0.5), or 'none'"),
    domain: Optional[str] = typer.Option(None, "--domain", help="multi-domain model: which domain (default: first)"),
):
    """Segment scans; each label map is written in its scan's exact geometry into the output folder, with
    optional probabilities, uncertainty, preview and report. Postprocessing flags override the checkpoint's
    config."""
    _run(_infer, inputs, model, output, fmt=fmt, tta=tta, save_probs=save_probs, uncertainty=save_uncertainty,
         device=device, overlap=overlap, sw_batch_size=sw_batch_size, preview=preview, report=report,
         channels_per_case=channels_per_case, domain=domain,
         post={"min_component_ml": min_size_ml, "largest_component": largest_component, "fill_holes": fill_holes,
               "relabel": relabel})


def _postprocess_config(current, overrides: dict):
    """The checkpoint's postprocess config with the command line's overrides (None = keep)."""
    from .config import PostprocessConfig
    from .errors import MedsegError

    raw = current.model_dump()
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(raw["relabel"], str):
        parts = raw["relabel"].split(":")
        if raw["relabel"].lower() == "none":
            raw["relabel"] = None
        elif len(parts) == 3:
            raw["relabel"] = {"source": parts[0], "target": parts[1], "below_ml": parts[2]}
        else:
            raise MedsegError(f"--relabel {raw['relabel']!r}: expected SOURCE:TARGET:ML, e.g. enhancing:necrotic:0.5")
    try:
        return PostprocessConfig.model_validate(raw)
    except ValueError as e:
        err = e.errors()[0]
        raise MedsegError(f"postprocessing option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _infer(inputs, model, output, *, fmt, tta, save_probs, uncertainty, device, overlap, sw_batch_size, preview,
           report, channels_per_case, post, domain=None):
    import matplotlib.pyplot as plt

    import medseg3d

    from .errors import MedsegError
    from .inference.segmenter import Segmenter
    from .io.cases import collect_cases
    from .io.preview import preview_figure
    from .io.report import case_report, report_writer
    from .io.scan import atomic_write_all
    from .io.writers import FORMATS, check_format, image_writer, label_writer, probabilities_writer

    seg = Segmenter.from_checkpoint(model, device=device, tta=tta, domain=domain)
    seg.configure(overlap=overlap, sw_batch_size=sw_batch_size)
    seg.postprocess = _postprocess_config(seg.postprocess, post)
    cases = collect_cases(inputs, seg.channels, channels_per_case)
    protected = {p.resolve() for c in cases for p in c.inputs}
    protected |= {f.resolve() for c in cases for p in c.inputs if p.is_dir() for f in p.iterdir()}
    plans = []
    for case in cases:  # every output path is known, and checked, before any work
        case_fmt = fmt or ("dicom-seg" if case.inputs[0].is_dir() else "nifti")
        map_ext = FORMATS.get("nifti" if case_fmt == "dicom-seg" else case_fmt, "")
        paths = {"labels": output / f"{case.name}{FORMATS.get(case_fmt, '')}",
                 "probs": output / f"{case.name}_probs.npz" if save_probs else None,
                 "uncertainty": output / f"{case.name}_uncertainty{map_ext}" if uncertainty else None,
                 "preview": output / f"{case.name}.png" if preview else None,
                 "report": output / f"{case.name}.json" if report else None}
        for p in paths.values():
            if p is not None and (p.resolve() in protected or p.resolve().parent in protected):
                raise MedsegError(f"{p}: would overwrite an input or write into an input DICOM folder; "
                                  "choose another --output folder")
        plans.append((case, case_fmt, paths))
    for case, case_fmt, paths in plans:
        scan = seg.read(case.inputs)
        check_format(case_fmt, scan)
        pred = seg.segment(scan, uncertainty=uncertainty)
        writers = {paths["labels"]: label_writer(pred.labels, scan, case_fmt, seg.labels, medseg3d.__version__)}
        if paths["probs"]:
            writers[paths["probs"]] = probabilities_writer(pred.probabilities, scan, seg.labels, seg.regions)
        if paths["uncertainty"]:
            map_fmt = "nifti" if case_fmt == "dicom-seg" else case_fmt
            writers[paths["uncertainty"]] = image_writer(pred.uncertainty, scan, map_fmt)
        fig = preview_figure(scan, pred.labels, seg.labels, title=case.name) if preview else None
        if fig is not None:
            writers[paths["preview"]] = lambda tmp, fig=fig: fig.savefig(tmp, dpi=90)
        if paths["report"]:
            info = case_report(scan, pred.labels, seg.labels, runtime_s=pred.runtime_s, device=str(seg.device),
                               model={"name": seg.config.model.name, "checkpoints": seg.sources},
                               outputs=[str(p) for p in paths.values() if p], tta=tta, passes=pred.passes)
            writers[paths["report"]] = report_writer(info)
        try:
            atomic_write_all(writers)
        finally:
            if fig is not None:
                plt.close(fig)
        typer.echo(f"{case.name}: wrote {paths['labels']} ({pred.runtime_s:.1f}s on {seg.device}"
                   f"{f', {pred.passes} passes' if pred.passes > 1 else ''})")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="checkpoint file or run folder"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript"),
    output: Path = typer.Option(..., "--output", "-o", help="file to write (.onnx or .pt)"),
    domain: Optional[str] = typer.Option(None, "--domain", help="multi-domain model: which domain (default: first)"),
):
    """Export the network (eval mode) to ONNX or TorchScript; the config, channels and labels go with it."""
    from .inference.export import export_checkpoint

    typer.echo(f"wrote {_run(export_checkpoint, checkpoint, fmt, output, domain)}")


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
