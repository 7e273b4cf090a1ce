"""Planning: a dataset fingerprint + the device's measured throughput + a time budget -> a config.

``plan_dataset(root, budget)`` runs the whole chain (fingerprint, device benchmark, plan, a check of the
planned step against a real one) and returns a :class:`Plan`; :func:`write_plan` writes it as a commented
config YAML and :func:`format_decisions` prints its decisions. ``plan_command`` is the body of the
``medseg3d plan`` command.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import MedsegError
from .benchmark import DeviceCosts, measure_device, verify
from .output import format_decisions, plan_yaml, write_plan
from .planner import Decision, Plan, make_plan, planned_geometry

#: a planned step or window whose real timing differs from the model by more than this is re-planned
VERIFY_TOLERANCE = 0.25
#: planned steps or windows predicted slower than this are not timed (the check stays seconds long)
VERIFY_MAX_S = 3.0


def planned_specs(plan: Plan) -> list[tuple[str, dict]]:
    """The (kind, spec) of the plan's training step and validation window, as the benchmark times them."""
    cfg, c = plan.config, plan.candidate
    net = {"dims": cfg["model"]["spatial_dims"], "base_filters": c["base"], "depth": c["depth"],
           "in_channels": c["in_ch"], "out_channels": c["out_ch"]}
    return [("step", {**net, "patch": list(c["patch"]), "batch": c["batch"]}),
            ("forward", {**net, "patch": list(c["patch"]), "batch": cfg["infer"]["sw_batch_size"]})]


def plan_dataset(dataset: str | Path, budget: str | float | None = None, device: str = "auto", *,
                 cache: bool = True, cache_dir: str | Path | None = None, spent_s: float = 0.0,
                 timer=None, check: bool = True, refresh: bool = False, count_planning: bool = False,
                 log: Callable[[str], None] | None = None) -> Plan:
    """Fingerprint ``dataset``, benchmark ``device``, plan for ``budget`` ('3m', '90s', seconds, or None for
    a quality plan) and, with ``check``, time the planned step and window for real (when predicted under
    3 s) and re-plan (at most twice) when the cost model was more than 25 % off. ``refresh`` re-measures the
    device instead of using its cached timings. ``count_planning`` takes the time spent fingerprinting and
    benchmarking off the budget too (for ``medseg3d train DATASET --budget``, where planning and training
    share one budget)."""
    from ..config import parse_duration
    from ..data.datasets import load_dataset
    from ..data.fingerprint import fingerprint

    say = log or (lambda s: None)
    try:
        budget_s = parse_duration(budget) if budget not in (None, "", "none") else None
    except ValueError as e:
        raise MedsegError(f"--budget: {e}") from None
    t0 = time.monotonic()
    info = load_dataset(dataset)
    say(f"fingerprinting {len(info.training)} training cases of {info.root} ...")
    fp = fingerprint(info, cache=cache, cache_dir=cache_dir)
    geo = planned_geometry(fp)
    say("timing the device (cached after the first run) ...")
    costs = measure_device(device, dims=(geo["dims"],), in_channels=len(info.channels),
                           out_channels=len(info.labels), volume=geo["volume"],
                           context_slices=geo["context_slices"], timer=timer, cache=cache, cache_dir=cache_dir,
                           log=say, refresh=refresh)
    plan = None
    for _ in range(3):
        spent = spent_s + (time.monotonic() - t0 if count_planning else 0.0)
        plan = make_plan(fp, costs, budget_s, device, spent_s=spent)
        if not check:
            break
        specs = [(k, sp) for k, sp in planned_specs(plan) if costs._model(k, sp) <= VERIFY_MAX_S]
        if not specs:
            break
        results = verify(costs, specs, timer=timer, cache=cache, cache_dir=cache_dir)
        off = [abs(m / p - 1) for p, m in results if p > 0]
        say("checked the planned step and window: " + ", ".join(f"predicted {p:.3f} s, measured {m:.3f} s"
                                                                for p, m in results))
        if all(o <= VERIFY_TOLERANCE for o in off):
            break
    plan.estimate["planning"] = time.monotonic() - t0
    return plan


def plan_command(dataset: str | Path, budget: str | float | None = None, device: str = "auto",
                 output: str | Path | None = None, echo: Callable[[str], Any] = print, verbose: bool = False,
                 refresh: bool = False, cache_dir: str | Path | None = None, timer=None) -> int:
    """``medseg3d plan DATASET [--budget 3m] [--device auto] [-o plan.yaml]``: plan, print the decisions, write
    the commented config (default ``<dataset folder name>_plan.yaml`` in the current folder). ``verbose``
    also prints every timing; ``refresh`` re-measures the device. Returns the exit code (a MedsegError is
    printed as ``error: ...`` and gives 1)."""
    try:
        plan = plan_dataset(dataset, budget, device, refresh=refresh, cache_dir=cache_dir, timer=timer,
                            log=lambda s: echo(s) if verbose or not s.startswith("  ") else None)
        out = Path(output) if output else Path(f"{plan.config['name']}.yaml")
        echo(format_decisions(plan))
        write_plan(plan, out)
        est = plan.estimate
        echo(f"estimated: {est['total']:.0f} s in all (training {est['training']:.0f} s); planning took "
             f"{est['planning']:.1f} s")
        echo(f"wrote {out}; train with: medseg3d train {out}")
        return 0
    except MedsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def plan_and_train(dataset: str | Path, budget: str | float | None = None, device: str = "auto",
                   overrides: list[str] | None = None, run_dir: str | Path | None = None,
                   started_at: float | None = None, log: Callable[[str], None] = print, *, cache_dir=None,
                   timer=None) -> Path:
    """``medseg3d train DATASET [--budget B]``: plan a config for the dataset on this device within the budget
    (planning counts against it), then train it; the plan (commented YAML) and its decisions are saved in the
    run folder as ``plan.yaml`` and ``plan.txt``. Returns the run folder. (``cache_dir`` and ``timer`` are
    :func:`plan_dataset`'s.)"""
    import tempfile

    from ..config import load_config
    from ..engine.trainer import Trainer

    started_at = time.monotonic() if started_at is None else started_at
    plan = plan_dataset(dataset, budget, device, count_planning=True, cache_dir=cache_dir, timer=timer,
                        spent_s=max(0.0, time.monotonic() - started_at),
                        log=lambda s: None if s.startswith("  ") else log(s))  # (the timings: `plan -v`)
    table = format_decisions(plan)
    log(table)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.yaml"
        text = plan_yaml(plan)  # data.root stays absolute: the file travels into the run folder
        path.write_text(text)
        cfg = load_config(path, overrides)
    return Trainer(cfg, run_dir, started_at=started_at,
                   extra_files={"plan.yaml": text, "plan.txt": table + "\n"}).fit()


__all__ = ["Decision", "DeviceCosts", "Plan", "format_decisions", "make_plan", "measure_device", "plan_and_train",
           "plan_command", "plan_dataset", "plan_yaml", "planned_geometry", "verify", "write_plan"]
