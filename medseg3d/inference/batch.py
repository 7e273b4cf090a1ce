"""Batch inference: files in, files out — what ``medseg3d infer`` does, as one function of the Python API.

:func:`segment_files` collects the cases named by the inputs (files, per-channel files, DICOM series, nnU-Net,
BraTS or plain folders), plans and checks every output path before any inference (never an input, never inside
an input DICOM folder, the output folder writable), then segments one case at a time (memory stays flat) and
writes each case's files together (temporary files renamed when all are written). A case that fails is reported
and skipped; the others are still written, and the result lists what failed. Started by torchrun
(``torchrun --nproc_per_node N -m medseg3d infer ...``), each process segments its share of the cases.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import MedsegError
from ..io.cases import Case, collect_cases
from ..io.scan import PathLike, atomic_write_all, case_name, image_suffix
from ..io.writers import (FORMATS, check_format, format_for_path, image_writer, label_writer, map_format,
                          mask_paths, mask_writers, output_format, probabilities_writer)
from ..version import __version__
from .segmenter import Segmenter, Uncertainty


@dataclass
class CaseOutputs:
    """The files one case will get (None: not asked for)."""

    case: Case
    fmt: str
    labels: Path
    probs: Optional[Path] = None
    uncertainty: Optional[Path] = None
    preview: Optional[Path] = None
    report: Optional[Path] = None
    masks: dict[str, Path] = field(default_factory=dict)  # label name -> binary mask file

    def paths(self) -> list[Path]:
        return [p for p in (self.labels, self.probs, self.uncertainty, self.preview, self.report) if p] + \
            list(self.masks.values())


@dataclass
class BatchResult:
    written: list[CaseOutputs] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case name, the one-line reason)
    seconds: float = 0.0
    statistics: Optional[Path] = None  # the statistics table over the cases (--statistics)

    @property
    def ok(self) -> bool:
        return not self.failed


def _single_file_output(output: Path) -> bool:
    """``-o seg.nii.gz``: the output names a file, not a folder."""
    return not output.is_dir() and format_for_path(output) is not None


def plan_outputs(cases: Sequence[Case], output: Path, fmt: Optional[str], *, save_probs: bool = False,
                 uncertainty: Optional[str] = None, preview: bool = True, report: bool = True,
                 masks: Optional[dict[str, int]] = None) -> list[CaseOutputs]:
    """Every output path, checked before any work: none may be an input or lie in an input DICOM folder, and
    no two cases may write one file. ``masks`` (the label names) adds one binary mask per label in
    ``OUT/CASE/``."""
    single = _single_file_output(output)
    if single and len(cases) != 1:
        raise MedsegError(f"{output}: names one file but there are {len(cases)} cases; give an output folder")
    if single and fmt is not None and not output.name.lower().endswith(
            (FORMATS[fmt], *output_format(fmt).other_suffixes)):
        raise MedsegError(f"{output}: the file name says {format_for_path(output)} but --format is {fmt}; name the "
                          f"file {case_name(output)}{FORMATS[fmt]} or leave out --format")
    protected = {p.resolve() for c in cases for p in c.inputs}
    protected |= {f.resolve() for c in cases for p in c.inputs if p.is_dir() for f in p.iterdir()}
    plans = []
    for case in cases:
        if single:
            case_fmt = fmt or format_for_path(output)
            suffix = next(s for s in (FORMATS[case_fmt], *output_format(case_fmt).other_suffixes, image_suffix(output))
                          if output.name.lower().endswith(s))
            folder, stem = output.parent, output.name[: -len(suffix)]
        else:
            case_fmt = fmt or ("dicom-seg" if case.inputs[0].is_dir() else "nifti")
            folder, stem = output, case.name
        map_ext = FORMATS[map_format(case_fmt)]
        plan = CaseOutputs(case, case_fmt, folder / f"{stem}{FORMATS[case_fmt]}" if not single else output,
                           probs=folder / f"{stem}_probs.npz" if save_probs else None,
                           uncertainty=folder / f"{stem}_uncertainty{map_ext}" if uncertainty else None,
                           preview=folder / f"{stem}.png" if preview else None,
                           report=folder / f"{stem}.json" if report else None,
                           masks=mask_paths(masks, folder / stem, output_format(case_fmt).mask_format)
                           if masks else {})
        for p in plan.paths():
            if p.resolve() in protected or p.resolve().parent in protected:
                raise MedsegError(f"{p}: would overwrite an input or write into an input DICOM folder; "
                                  "choose another output")
        plans.append(plan)
    seen: dict[Path, str] = {}
    for plan in plans:
        for p in plan.paths():
            if p.resolve() in seen:
                raise MedsegError(f"{p}: two cases ({seen[p.resolve()]}, {plan.case.name}) would write this file")
            seen[p.resolve()] = plan.case.name
    return plans


def check_writable(folder: Path) -> list[Path]:
    """Create ``folder`` if needed and check that files can be written there, before any inference runs.
    Returns the folders it created (outermost first), so they can be removed again if nothing is written."""
    created = [p for p in reversed([folder, *folder.parents]) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".medseg3d-write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        _remove_empty(created)
        blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else (e.strerror or str(e))
        what = "cannot write the outputs there" if folder.is_dir() else "cannot create the output folder"
        raise MedsegError(f"{folder}: {what} ({reason}); choose another output folder or fix its "
                          f"permissions") from None
    return created


def _remove_empty(folders: Sequence[Path]) -> None:
    for d in reversed(list(folders)):
        try:
            d.rmdir()
        except OSError:
            pass


def segment_files(inputs: Sequence[PathLike], models: PathLike | Sequence[PathLike] | Segmenter, output: PathLike,
                  *, fmt: Optional[str] = None, tta: bool = False, save_probs: bool = False,
                  uncertainty: Optional[Uncertainty] = None, device: str = "auto", overlap: Optional[float] = None,
                  sw_batch_size: Optional[int] = None, preview: bool = True, report: bool = True,
                  channels_per_case: Optional[int] = None, postprocess: Optional[dict[str, Any]] = None,
                  domain: Optional[str] = None, allow_2d: Optional[bool] = None, masks: bool = False,
                  statistics: bool = False, fast: bool = False, engine: Optional[str] = None,
                  precision: Optional[str] = None, threads: Optional[int] = None, skip_empty: Optional[bool] = None,
                  log: Callable[[str], None] = print) -> BatchResult:
    """Segment every case named by ``inputs`` with the model(s) (paths, or a ready :class:`Segmenter`, whose own
    device, TTA, domain and engine settings then apply) and write the outputs into the folder ``output``
    (or, for one case, the file ``output`` such as ``seg.nii.gz``). ``postprocess`` overrides the checkpoint's
    postprocess settings (keys of the config's ``postprocess`` section; None keeps a setting). ``allow_2d``
    accepts single-slice images for a 3D model (default: only for 2D models). ``masks`` adds one binary mask per
    label (``OUT/CASE/<label>``); ``statistics`` adds each channel's intensity statistics per label to the
    reports and writes ``OUT/statistics.csv``; ``fast`` segments on a coarser grid without TTA (see
    :meth:`Segmenter.fast`). ``engine``, ``precision``, ``threads`` and ``skip_empty`` override the model's
    window engine settings (:mod:`medseg3d.inference.engines`; the report records what ran). Returns what was
    written and what failed; ``log`` gets one line per case."""
    t_start = time.perf_counter()
    if uncertainty not in (None, "entropy", "variance"):
        raise MedsegError(f"unknown uncertainty '{uncertainty}'; use entropy or variance")
    seg = models if isinstance(models, Segmenter) else Segmenter.from_checkpoint(
        models if isinstance(models, (list, tuple)) else [models], device=device, tta=tta, domain=domain,
        engine=engine, precision=precision)
    if fast:
        log(seg.fast())
    seg.configure(overlap=overlap, sw_batch_size=sw_batch_size, threads=threads, skip_empty=skip_empty)
    if postprocess:
        seg.set_postprocess(**postprocess)
    output = Path(output)
    cases = collect_cases(inputs, seg.channels, channels_per_case)
    if fmt is not None:
        output_format(fmt)
    plans = plan_outputs(cases, output, fmt, save_probs=save_probs, uncertainty=uncertainty, preview=preview,
                         report=report or statistics, masks=seg.labels if masks else None)
    table = (plans[0].labels.parent if _single_file_output(output) else output) / "statistics.csv"
    if statistics and table.resolve() in {p.resolve() for plan in plans for p in plan.paths()}:
        raise MedsegError(f"{table}: a case would write this file too; choose another output folder")
    created = [d for folder in sorted({p.parent for plan in plans for p in plan.paths()})
               for d in check_writable(folder)]
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    single = len(plans) == 1  # one case: its error is the command's one line
    if world > 1:  # under torchrun every process takes its share of the cases
        plans, created = plans[rank::world], []
    result = BatchResult()
    rows: list[dict] = []
    try:
        _segment_all(seg, plans, uncertainty, log, result, allow_2d, rows if statistics else None, single)
        if statistics and rows:
            from ..io.report import statistics_table
            from ..io.scan import atomic_write

            result.statistics = atomic_write(table if world == 1 else table.with_name(f"statistics_rank{rank}.csv"),
                                             statistics_table(rows))
            log(f"wrote {result.statistics}")
    finally:
        _remove_empty(created)  # a folder made for outputs that never came is not left behind
    result.seconds = time.perf_counter() - t_start
    return result


def _segment_all(seg: Segmenter, plans: list[CaseOutputs], uncertainty, log, result: BatchResult,
                 allow_2d: Optional[bool] = None, rows: Optional[list] = None, single: bool = False) -> None:
    for plan in plans:
        try:
            try:
                _segment_case(seg, plan, uncertainty, log, allow_2d, rows)
            except OSError as e:  # a failed write (disk full, permissions): nothing of the case is left behind
                raise MedsegError(f"{plan.labels.parent}: writing {plan.case.name}'s outputs failed "
                                  f"({e.strerror or e}), so none of them was written; free disk space or fix the "
                                  f"folder's permissions, or choose another output folder") from None
            result.written.append(plan)
        except MedsegError as e:
            if single:
                raise  # one case: its error is the command's one line
            result.failed.append((plan.case.name, str(e)))
            log(f"{plan.case.name}: FAILED: {e}")


def _segment_case(seg: Segmenter, plan: CaseOutputs, uncertainty, log, allow_2d=None,
                  rows: Optional[list] = None) -> None:
    from ..io.preview import preview_figure, preview_writer
    from ..io.report import case_report, report_writer, statistics_rows

    scan = seg.read(plan.case.inputs, allow_2d=allow_2d)
    for warning in check_format(plan.fmt, scan):  # e.g. blank DICOM UIDs repaired, before any inference
        log(f"{plan.case.name}: warning: {warning}")
    pred = seg.segment(scan, uncertainty=uncertainty)
    codes = seg.codes
    writers = {plan.labels: label_writer(pred.labels, scan, plan.fmt, seg.labels, __version__, codes)}
    if plan.masks:
        writers.update(mask_writers(pred.labels, scan, seg.labels, next(iter(plan.masks.values())).parent,
                                    output_format(plan.fmt).mask_format, codes))
    if plan.probs:
        writers[plan.probs] = probabilities_writer(pred.probabilities, scan, seg.labels, seg.regions)
    if plan.uncertainty:
        writers[plan.uncertainty] = image_writer(pred.uncertainty, scan, map_format(plan.fmt))
    if plan.preview:
        fig = preview_figure(scan, pred.labels, seg.labels, title=plan.case.name, channel_names=seg.channels)
        writers[plan.preview] = preview_writer(fig)
    if plan.report:
        info = case_report(scan, pred.labels, seg.labels, runtime_s=pred.runtime_s, device=str(seg.device),
                           model={"name": seg.config.model.name, "checkpoints": seg.sources},
                           outputs=[str(p) for p in plan.paths()], tta=seg.tta, passes=pred.passes,
                           channel_names=seg.channels if rows is not None else None)
        info["inference"] = seg.describe()
        writers[plan.report] = report_writer(info)
        if rows is not None:
            rows += statistics_rows(plan.case.name, info["labels"])
    atomic_write_all(writers)
    log(f"{plan.case.name}: wrote {plan.labels} ({pred.runtime_s:.1f}s on {seg.device}"
        f"{f', {pred.passes} passes' if pred.passes > 1 else ''})")
