"""The ``medseg3d`` command. Thin: it parses, calls the Python API, and turns a MedsegError into one line on
stderr and a non-zero exit code (a traceback only with ``--debug``). Heavy imports happen inside the commands."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

# the budget of `train` counts from the command's start (under --nproc, from the launcher's)
_STARTED = float(os.environ.get("MEDSEG3D_STARTED", time.monotonic()))
_STATE = {"debug": False}

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 120, "help_option_names": ["-h", "--help"]},
                  help="Volumetric-first 3D medical image segmentation (PyTorch + MONAI).")


def _format_help() -> str:
    from .io.writers import format_help

    return "output format: " + format_help()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show Python tracebacks instead of one-line errors")):
    _STATE["debug"] = debug


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    from .errors import MedsegError, medseg_cause

    if _STATE["debug"]:
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except MedsegError as e:
        _fail(str(e), getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemoryError:
        _fail("out of memory; use a smaller patch or sliding-window batch, or a machine with more memory")
    except Exception as e:  # a MONAI transform wraps the reader's error; anything else is a bug worth reporting
        cause = medseg_cause(e)
        if cause is not None:
            _fail(str(cause), getattr(cause, "exit_code", 1))
        _fail(f"unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(rerun with --debug for the traceback)", 2)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/), or a dataset folder to plan for and train"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override, e.g. --set train.epochs=5"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run folder (default: OUTPUT_DIR/NAME_TIME)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this folder from its last.pt"),
    budget: Optional[str] = typer.Option(None, "--budget", help="wall clock of the whole command, e.g. 90s, 10m, 2h"),
    device: str = typer.Option("auto", "--device", help="dataset folder only: plan for auto, cpu or cuda"),
    nproc: int = typer.Option(1, "--nproc", help="train on N local processes (torchrun + DistributedDataParallel: "
                                                 "N GPUs, or N CPU processes with gloo)"),
):
    """Train a network from a config, or plan a config for a dataset folder and train it; writes a run folder
    with checkpoints, logs, the resolved config (and the plan)."""
    if resume is not None and run_dir is not None:
        _fail("give either --resume RUN_DIR or --run-dir, not both")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from .engine.distributed import launch

        argv = [a for i, a in enumerate(sys.argv[1:]) if not (a.startswith("--nproc") or (
            i and sys.argv[i] == "--nproc"))]
        raise typer.Exit(launch(nproc, argv))
    if config.is_dir() and resume is not None:  # a planned run resumes with the config it was planned with
        config = resume / "config.yaml"
    if config.is_dir():
        from .plan import plan_and_train

        out = _run(plan_and_train, config, budget=budget, device=device, overrides=list(set_ or []),
                   run_dir=run_dir, started_at=_STARTED, log=typer.echo)
    else:
        from .engine.trainer import train as _train

        overrides = list(set_ or []) + ([f"train.budget={budget}"] if budget else [])
        out = _run(_train, config, overrides, run_dir, resume, started_at=_STARTED)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"done: {out}")


@app.command()
def plan(
    dataset: Path = typer.Argument(..., help="dataset folder (MSD, nnU-Net v2 raw or BraTS folders)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="wall clock for `medseg3d train` of the plan, e.g. "
                                                                "3m, 2h (default: plan for quality, as nnU-Net)"),
    device: str = typer.Option("auto", "--device", help="plan for auto, cpu or cuda"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="config file to write "
                                                                      "(default: <dataset name>.yaml here)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="print every timing"),
    rebenchmark: bool = typer.Option(False, "--rebenchmark", help="measure this device again (it is cached)"),
):
    """Fit a config to a dataset, this machine and a time budget: fingerprint the data, time candidate networks
    here, print each decision with the number behind it and write a commented config to train."""
    from .plan import plan_command

    raise typer.Exit(_run(plan_command, dataset, budget, device, output, echo=typer.echo, verbose=verbose,
                          refresh=rebenchmark))


@app.command()
def infer(
    inputs: List[Path] = typer.Argument(..., help="scans: NIfTI, NRRD or MHA files (one multichannel file or one file "
                                             "per channel: CASE_0000.nii.gz ..., CASE_t1ce.nii.gz ...), DICOM series "
                                             "folders, nnU-Net folders, folders of BraTS case folders, or folders "
                                             "of scans (one file per case)"),
    model: List[Path] = typer.Option(..., "--model", "-m", help="checkpoint file, run folder, or exported .onnx / "
                                                              "TorchScript file; repeat for an ensemble"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder (or, for one case, a file such as "
                                                          "seg.nii.gz)"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help=_format_help()),
    tta: bool = typer.Option(False, "--tta", help="test-time augmentation: average over the mirrorings training used"),
    save_probs: bool = typer.Option(False, "--save-probs", help="also write CASE_probs.npz (float16 probabilities)"),
    save_uncertainty: Optional[str] = typer.Option(None, "--save-uncertainty",
                                                   help="also write CASE_uncertainty: entropy or variance"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    overlap: Optional[float] = typer.Option(None, help="sliding-window overlap in [0, 1) (default: the checkpoint's)"),
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
    allow_2d: bool = typer.Option(False, "--allow-2d", help="accept single-slice images for a 3D model"),
    masks: bool = typer.Option(False, "--masks", help="also write one binary mask per label, OUT/CASE/<label> "
                                                     "(TotalSegmentator's layout), in the label map's format"),
    statistics: bool = typer.Option(False, "--statistics", help="add each input channel's mean/median/std inside "
                                                               "each label to CASE.json; write OUT/statistics.csv"),
    fast: bool = typer.Option(False, "--fast", help="a quick look: a 1.5x coarser grid, no window overlap, no TTA "
                                                   "(stated in the report)"),
    engine: Optional[str] = typer.Option(None, "--engine", help="what runs the windows: auto (the fastest measured "
                                                               "here whose labels agree with fp32), torch, "
                                                               "onnxruntime or openvino (default: the model's)"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, fp32 or bf16 (default: the model's)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="intra-op threads of the engine (default: measured)"),
    skip_empty: Optional[bool] = typer.Option(None, "--skip-empty/--no-skip-empty",
                                              help="reuse one output for all-zero windows (exact; default on)"),
):
    """Segment scans; each label map is written in its scan's exact geometry, with optional probabilities,
    uncertainty, preview and report. Postprocessing flags override the checkpoint's config. A case that fails is
    reported and skipped; the exit code is 1 when any failed."""
    from .inference.batch import segment_files

    result = _run(segment_files, inputs, model, output, fmt=fmt, tta=tta, save_probs=save_probs,
                  uncertainty=save_uncertainty, device=device, overlap=overlap, sw_batch_size=sw_batch_size,
                  preview=preview, report=report, channels_per_case=channels_per_case, domain=domain,
                  allow_2d=allow_2d or None, masks=masks, statistics=statistics, fast=fast, engine=engine,
                  precision=precision, threads=threads, skip_empty=skip_empty,
                  postprocess={"min_component_ml": min_size_ml, "largest_component": largest_component,
                               "fill_holes": fill_holes, "relabel": relabel},
                  log=typer.echo)
    n = len(result.written) + len(result.failed)
    if result.failed:
        _fail(f"{len(result.failed)} of {n} case(s) failed ({', '.join(c for c, _ in result.failed)}); "
              f"the other {len(result.written)} were written")
    typer.echo(f"{n} case(s) in {result.seconds:.1f}s")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="checkpoint file or run folder"),
    fmt: str = typer.Option("onnx", "--format", "-f",
                            help="onnx, torchscript, or monai-bundle (a folder that `python -m monai.bundle run` "
                                 "runs without medseg3d: preprocessing, sliding window and label mapping as MONAI "
                                 "transforms, the network as TorchScript)"),
    output: Path = typer.Option(..., "--output", "-o", help="file to write (.onnx or .pt), or a new folder for "
                                                             "monai-bundle"),
    domain: Optional[str] = typer.Option(None, "--domain", help="multi-domain model: which domain (default: first)"),
):
    """Export the network (eval mode) to ONNX or TorchScript, the model contract going with it; or the whole
    inference pipeline as a MONAI bundle (run it as its docs/README.md says)."""
    from .inference.export import export_checkpoint

    out = _run(export_checkpoint, checkpoint, fmt, output, domain)
    typer.echo(f"wrote {out}")
    if fmt == "monai-bundle":
        typer.echo(f"run it with: python -m monai.bundle run --config_file {out / 'configs' / 'inference.json'} "
                   f"--dataset_dir SCANS --output_dir OUT   (needs monai, nibabel, fire)")


@app.command()
def evaluate(
    pred_dir: Path = typer.Argument(..., help="folder of predicted label maps (NIfTI, NRRD, MHA)"),
    gt_dir: Path = typer.Argument(..., help="folder of reference label maps, matched by file name"),
    labels: Optional[str] = typer.Option(None, "--labels", help="name=value,... (default: dataset.json beside the "
                                                                "references, else the values found, as label_<v>)"),
    regions: Optional[str] = typer.Option(None, "--regions",
                                          help="name=v+v+...,... e.g. WT=1+2+4,TC=1+4,ET=4, or brats (1/2/4), brats2023"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV table to write (default: print it)"),
    hd95: bool = typer.Option(True, help="also compute HD95 (mm)"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="score the references that have a prediction"),
):
    """Dice and HD95 per case and class/region for two folders, with mean/std rows, as a CSV table."""
    _run(_evaluate, pred_dir, gt_dir, labels, regions, output, hd95, allow_missing)


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


def _evaluate(pred_dir, gt_dir, labels, regions, output, hd95, allow_missing):
    import csv
    import io

    from .config import brats_regions
    from .engine.metrics import evaluate_folders, labels_near, summarise, write_table

    lab = _parse_pairs(labels, "labels", False) if labels else labels_near(gt_dir)
    if regions in ("brats", "brats2018"):
        reg = brats_regions("2018")
    elif regions == "brats2023":
        reg = brats_regions("2023")
    else:
        reg = _parse_pairs(regions, "regions", True) if regions else None
    rows = evaluate_folders(pred_dir, gt_dir, lab, reg, hd95=hd95, allow_missing=allow_missing)
    keys = [k for k in rows[0] if k != "case"]
    mean = summarise(rows, keys)[0]
    if output is not None:
        typer.echo(f"wrote {write_table(rows, output)}")
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["case", *keys])
        w.writeheader()
        for r in rows + summarise(rows, keys):
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        typer.echo(buf.getvalue(), nl=False)
    typer.echo(f"{len(rows)} cases; mean " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items() if k != "case"))


@app.command()
def models(dims: Optional[int] = typer.Option(None, help="only nets that support this spatial_dims")):
    """List the networks: dims, parameters, forward GFLOPs and paper."""
    from .models.summary import format_table, model_table

    typer.echo(format_table(model_table(dims)))


@app.command()
def check(
    target: Path = typer.Argument(..., help="a dataset folder (MSD, nnU-Net v2 raw, BraTS folders) or a config"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="config override, e.g. --set data.root=..."),
):
    """Check a dataset before training (as nnU-Net's --verify_dataset_integrity): geometry of images, labels and
    channels, label values, channel counts, NaN/Inf, duplicate ids, outliers. One line per problem; exit code 1
    on errors (warnings allowed). `train` runs the same check first."""
    from .data.check import check_config as check_data, check_folder, format_problems

    if not target.exists():
        _fail(f"{target}: not found; give a dataset folder or a config file")
    if target.is_dir():
        problems, n = _run(check_folder, target)
        root = target
    else:
        from .config import load_config

        cfg = _run(load_config, target, set_ or [])
        problems, n = _run(check_data, cfg)
        root = cfg.data.root
    typer.echo(format_problems(problems, n, root))
    raise typer.Exit(1 if any(p.severity == "error" for p in problems) else 0)


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
