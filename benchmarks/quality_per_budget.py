"""Quality per time budget: medseg3d's budgeted training against the MONAI tutorial baseline.

For each data set and each wall-clock budget B, in the same run and one after the other (never in parallel):

- **medseg3d**: ``medseg3d train DATASET --budget B`` then ``medseg3d infer`` on the held-out scans, each a
  subprocess whose wall clock is measured (start-up, imports and preprocessing included: every run gets an
  empty preprocessing cache, ``MEDSEG3D_CACHE``, as a new user's first run has); iterations are read from the
  run folder's ``log.csv``;
- **MONAI**: ``benchmarks/monai_baseline.py`` (UNet 16-128 with residual units, 64³ crops, DiceCE, Adam 1e-3,
  plain Dataset, 2 mm) for the same B, in a subprocess as well; it segments the same held-out scans.

Both outputs are scored on each held-out scan's own grid against ``labelsTs`` with the same code
(``medseg3d.engine.metrics.dice_per_class``: Dice per label value, NaN where a class is absent from both), after
checking that each prediction has the scan's shape and affine. The table gives, per data set, B and method: the
iterations and patches done, the training wall clock against B (the ``+10 %`` check), the inference time, Dice
per class (mean over the held-out scans) and their mean; then the targets:

- at the largest budget (3 min by default) medseg3d beats MONAI by >= 0.03 mean Dice, per data set;
- at each smaller budget (90 s) medseg3d keeps >= 0.95 of its largest-budget mean Dice.

It also prints ``uptime`` (the load average: numbers taken on a busy machine are not results), the CPU model,
the thread settings and versions, and writes the table as markdown to ``OUT/quality_per_budget.md``.

    python benchmarks/quality_per_budget.py [--budgets 90s,3m] [--datasets samples,anatomy] [--out DIR] [--quick]

Data sets: ``samples`` (the repository's data_samples/, BraTS-like phantoms, 6 training + 2 held-out scans),
``anatomy`` (benchmarks/anatomy.py: T1 from the MNI template, gray/white matter, 6 + 2; needs ``nilearn``,
built once into ``~/.cache/medseg3d/bench/anatomy``), or any data set folder (MSD or nnU-Net v2 raw) with held-out
scans in ``imagesTs`` and their labels in ``labelsTs``. ``--quick`` checks the plumbing in a few minutes
(budgets 20 s and 40 s, the anatomy cases at 1.5x coarser voxels); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for p in (REPO, BENCH):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from medseg3d.config import parse_duration  # noqa: E402

STAND_IN_CONFIG = REPO / "configs" / "demo.yaml"
BEAT_MONAI_BY = 0.03   # mean Dice, at the largest budget
KEEP_AT_SHORT = 0.95   # fraction of the largest budget's mean Dice kept at the smaller budgets
OVERRUN = 1.10         # a train command must return within B + 10 %


# ---- the medseg3d side --------------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medseg3d.cli", *args]


def _env(cache: Path | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    if cache is not None:
        env["MEDSEG3D_CACHE"] = str(cache)
    return env


def has_planned_train() -> bool:
    """Whether this medseg3d has ``medseg3d plan`` (and so ``medseg3d train DATASET --budget B``)."""
    r = subprocess.run(_cli("plan", "--help"), env=_env(), capture_output=True, text=True)
    return r.returncode == 0


def medseg3d_train_argv(dataset: Path, budget_s: float, run_dir: Path, planned: bool) -> list[str]:
    """The training command. ``planned``: ``medseg3d train DATASET --budget B`` (plans a config fitted to the
    data and this machine, then trains). Until that exists, the stand-in is the quick-start config pointed at
    the data set: ``medseg3d train configs/demo.yaml --set data.root=DATASET --budget B``."""
    budget = f"{budget_s:g}s"
    if planned:
        return _cli("train", str(dataset), "--budget", budget, "--run-dir", str(run_dir))
    return _cli("train", str(STAND_IN_CONFIG), "--set", f"data.root={dataset}", "--budget", budget,
                "--run-dir", str(run_dir))


def shown(argv: list[str]) -> str:
    """A command as the user types it (``medseg3d ...``)."""
    return " ".join(["medseg3d", *argv[3:]])


def _timed(argv: list[str], log: Path, env: dict) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)).returncode
    return rc, time.monotonic() - t0


def _tail(log: Path, n: int = 6) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    return "\n".join(lines[-n:])


def run_medseg3d(dataset: Path, budget_s: float, work: Path, planned: bool, test_cases: list[dict]) -> dict:
    """Train with a budget, then segment the held-out scans; each command timed as a subprocess."""
    run_dir, cache, pred_dir = work / "run", work / "cache", work / "predictions"
    env = _env(cache)
    rc, train_s = _timed(medseg3d_train_argv(dataset, budget_s, run_dir, planned), work / "train.log", env)
    if not run_dir.is_dir():  # a train command that chose its own run folder says so in its last line
        done = [ln for ln in (work / "train.log").read_text(errors="replace").splitlines() if ln.startswith("done: ")]
        run_dir = Path(done[-1][6:].strip()) if done else run_dir
    res = {"method": "medseg3d" + ("" if planned else " (demo.yaml stand-in)"), "train_s": train_s,
           "iterations": math.nan, "patches": math.nan, "infer_s": math.nan, "predictions": {}}
    log_csv = run_dir / "log.csv"
    if log_csv.is_file():
        rows = list(csv.DictReader(open(log_csv)))
        if rows:
            res["iterations"] = int(rows[-1]["iterations"])
            try:
                import yaml

                batch = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["batch_size"]
                res["patches"] = res["iterations"] * int(batch)
            except (OSError, KeyError, TypeError, ValueError):
                pass
    if rc != 0:
        res["error"] = f"train exited {rc}: {_tail(work / 'train.log')}"
        return res
    inputs = [f for case in test_cases for f in case["image"]]
    rc, infer_s = _timed(_cli("infer", *inputs, "-m", str(run_dir), "-o", str(pred_dir), "--no-preview",
                              "--no-report"), work / "infer.log", env)
    res["infer_s"] = infer_s
    if rc != 0:
        res["error"] = f"infer exited {rc}: {_tail(work / 'infer.log')}"
        return res
    res["predictions"] = {c["id"]: str(pred_dir / f"{c['id']}.nii.gz") for c in test_cases}
    return res


# ---- the MONAI side -----------------------------------------------------------------------------------------
def run_monai(dataset: Path, budget_s: float, work: Path) -> dict:
    argv = [sys.executable, str(BENCH / "monai_baseline.py"), str(dataset), "--budget", f"{budget_s:g}",
            "--out", str(work)]
    rc, wall = _timed(argv, work / "monai.log", _env())
    if rc != 0 or not (work / "result.json").is_file():
        return {"method": "MONAI tutorial", "train_s": wall, "iterations": math.nan, "patches": math.nan,
                "infer_s": math.nan, "predictions": {}, "error": f"exited {rc}: {_tail(work / 'monai.log')}"}
    r = json.loads((work / "result.json").read_text())
    r["method"] = "MONAI tutorial"
    r["process_s"] = wall  # train + inference + start-up, one process
    return r


# ---- scoring ------------------------------------------------------------------------------------------------
def score(predictions: dict[str, str], dataset: Path, labels: dict[str, int], test_cases: list[dict]) -> dict:
    """Dice per foreground class (mean over the held-out scans) and their mean, on each scan's own grid."""
    import nibabel as nib

    from medseg3d.engine.metrics import dice_per_class

    names = [n for n, v in labels.items() if v != 0]
    values = [labels[n] for n in names]
    per_case, problems = [], []
    for case in test_cases:
        ref_path = dataset / "labelsTs" / f"{case['id']}.nii.gz"
        pred_path = predictions.get(case["id"])
        if pred_path is None or not Path(pred_path).is_file():
            problems.append(f"{case['id']}: no prediction")
            continue
        ref, pred = nib.load(str(ref_path)), nib.load(str(pred_path))
        if pred.shape[:3] != ref.shape[:3] or not np.allclose(pred.affine, ref.affine, atol=1e-3):
            problems.append(f"{case['id']}: prediction not on the scan's grid ({pred.shape}, {ref.shape})")
            continue
        per_case.append(dice_per_class(np.asarray(pred.dataobj).astype(np.int64),
                                       np.asarray(ref.dataobj).astype(np.int64), values))
    dice = np.nanmean(np.array(per_case, float), axis=0) if per_case else np.full(len(names), np.nan)
    return {"names": names, "dice": [float(d) for d in dice],
            "mean": float(np.nanmean(dice)) if per_case else math.nan, "n": len(per_case), "problems": problems}


# ---- the run ------------------------------------------------------------------------------------------------
def resolve_dataset(name: str, out: Path, quick: bool) -> Path:
    if name == "samples":
        return REPO / "data_samples"
    if name == "anatomy":
        from anatomy import DEFAULT_OUT, build_anatomy_dataset

        if quick:
            return build_anatomy_dataset(DEFAULT_OUT.parent / "anatomy_quick", scale=1.5, overwrite=True)
        return build_anatomy_dataset(DEFAULT_OUT, overwrite=True)  # rebuilt only if the script changed
    p = Path(name).expanduser().resolve()
    if not p.is_dir():
        raise SystemExit(f"error: {name}: not 'samples', 'anatomy' or a data set folder")
    return p


def machine_lines() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        up = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    import monai
    import torch

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    return [f"uptime: {up}", f"CPU: {cpu}, {os.cpu_count()} logical cores",
            f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"torch default {torch.get_num_threads()}",
            f"versions: python {platform.python_version()}, torch {torch.__version__}, MONAI {monai.__version__}, "
            f"medseg3d {commit}"]


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def table(rows: list[dict]) -> list[str]:
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == ds]
        names = next((r["score"]["names"] for r in group if r["score"]["names"]), [])
        out += [f"**{ds}**", "",
                "| budget | method | iterations | patches | train wall s | ≤ B+10 % | infer s | " +
                " | ".join(f"Dice {n}" for n in names) + " | Dice mean |",
                "|---:|---|---:|---:|---:|:---:|---:|" + "---:|" * len(names) + "---:|"]
        for r in group:
            budget, s = r["budget_s"], r["score"]
            ok = "failed" if r.get("error") else "✓" if r["train_s"] <= OVERRUN * budget else "✗"
            dice = s["dice"] if s["dice"] else [math.nan] * len(names)
            out.append(f"| {budget:g} s | {r['method']} | {_f(r['iterations'], '{:.0f}')} | "
                       f"{_f(r['patches'], '{:.0f}')} | {r['train_s']:.1f} | {ok} | {_f(r['infer_s'], '{:.1f}')} | "
                       + " | ".join(_f(d) for d in dice) + f" | {_f(s['mean'])} |")
        out.append("")
    return out


def targets(rows: list[dict], budgets: list[float]) -> list[str]:
    top = max(budgets)
    out = []

    def mean(ds, b, method):
        r = next((r for r in rows if r["dataset"] == ds and r["budget_s"] == b and r["method"].startswith(method)),
                 None)
        return r["score"]["mean"] if r else math.nan

    for ds in dict.fromkeys(r["dataset"] for r in rows):
        m, b = mean(ds, top, "medseg3d"), mean(ds, top, "MONAI")
        verdict = "PASS" if m - b >= BEAT_MONAI_BY else "FAIL"
        out.append(f"- {ds}, B = {top:g} s: medseg3d {_f(m)} vs MONAI {_f(b)}, difference {_f(m - b, '{:+.3f}')} "
                   f"(target >= +{BEAT_MONAI_BY}): {verdict}")
        for short in sorted(b_ for b_ in budgets if b_ < top):
            s = mean(ds, short, "medseg3d")
            ratio = s / m if m and not math.isnan(m) else math.nan
            verdict = "PASS" if ratio >= KEEP_AT_SHORT else "FAIL"
            out.append(f"- {ds}, B = {short:g} s: medseg3d {_f(s)} = {_f(ratio, '{:.2f}')} of its {top:g} s Dice "
                       f"(target >= {KEEP_AT_SHORT}): {verdict}")
    over = [f"{r['dataset']} {r['budget_s']:g} s {r['method']} ({r['train_s']:.0f} s)" for r in rows
            if r["train_s"] > OVERRUN * r["budget_s"]]
    out.append("- training within B + 10 %: " + ("all" if not over else "FAIL for " + "; ".join(over)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default=None, help="comma-separated wall-clock budgets (default 90s,3m)")
    ap.add_argument("--datasets", default="samples,anatomy",
                    help="comma-separated: samples, anatomy or data set folders (default samples,anatomy)")
    ap.add_argument("--out", default=None, help="work folder: runs, predictions, logs and quality_per_budget.md "
                                                "(default ~/.cache/medseg3d/bench/quality_<time>)")
    ap.add_argument("--quick", action="store_true", help="plumbing check: budgets 20s,40s and smaller anatomy cases")
    ap.add_argument("--medseg3d-train", choices=["auto", "planned", "stand-in"], default="auto",
                    help="'planned': medseg3d train DATASET --budget B; 'stand-in': medseg3d train configs/demo.yaml "
                         "--set data.root=DATASET --budget B; 'auto': planned when `medseg3d plan` exists")
    args = ap.parse_args(argv)

    budgets = [parse_duration(b) for b in (args.budgets or ("20s,40s" if args.quick else "90s,3m")).split(",")]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path.home() / ".cache" / "medseg3d" / "bench" / f"quality_{stamp}").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    planned = has_planned_train() if args.medseg3d_train == "auto" else args.medseg3d_train == "planned"

    from medseg3d.data.datasets import load_dataset

    before = machine_lines()
    print("\n".join(before), flush=True)
    print(f"medseg3d training command: {shown(medseg3d_train_argv(Path('DATASET'), budgets[0], Path('RUN'), planned))}")
    rows = []
    for name in args.datasets.split(","):
        dataset = resolve_dataset(name.strip(), out, args.quick)
        info = load_dataset(dataset)
        tests = [c for c in info.test if (dataset / "labelsTs" / f"{c['id']}.nii.gz").is_file()]
        if not tests:
            raise SystemExit(f"error: {dataset}: no held-out scans with labels in labelsTs")
        ds_name = name.strip() if name.strip() in ("samples", "anatomy") else dataset.name
        for budget in budgets:
            work = out / ds_name / f"{budget:g}s"
            for method in ("medseg3d", "monai"):
                print(f"[{datetime.datetime.now():%H:%M:%S}] {ds_name}, B = {budget:g} s: {method} ...", flush=True)
                r = (run_medseg3d(dataset, budget, work / "medseg3d", planned, tests) if method == "medseg3d"
                     else run_monai(dataset, budget, work / "monai"))
                r.update(dataset=ds_name, budget_s=budget, score=score(r["predictions"], dataset, info.labels, tests))
                if r.get("error"):
                    print(f"  failed: {r['error']}", flush=True)
                for p in r["score"]["problems"]:
                    print(f"  {p}", flush=True)
                print(f"  {_f(r['iterations'], '{:.0f}')} iterations, train {r['train_s']:.1f} s, infer "
                      f"{_f(r['infer_s'], '{:.1f}')} s, Dice mean {_f(r['score']['mean'])}", flush=True)
                rows.append(r)

    lines = table(rows)
    goal = targets(rows, budgets)
    after = machine_lines()[0]
    notes = [
        "",
        "Targets:",
        *goal,
        "",
        *before,
        f"after the run: {after}",
        f"medseg3d: `{shown(medseg3d_train_argv(Path('DATASET'), budgets[0], Path('RUN'), planned))}` then "
        "`medseg3d infer SCANS -m RUN -o OUT --no-preview --no-report`, each timed as a subprocess with an empty "
        "preprocessing cache; MONAI: `benchmarks/monai_baseline.py` (its training clock includes its imports and "
        "data loading; infer s is its inference on the held-out scans). Dice: mean over the held-out scans on each "
        "scan's own grid; iterations: optimizer steps; patches: crops seen in training.",
    ]
    if args.quick:
        notes.insert(0, "(--quick: a plumbing check with tiny budgets; these numbers are not results)")
    text = "\n".join(lines + notes) + "\n"
    print("\n" + text)
    md = out / "quality_per_budget.md"
    md.write_text(f"### Quality per time budget ({datetime.date.today()})\n\n" + text)
    (out / "quality_per_budget.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(f"table: {md}")


if __name__ == "__main__":
    main()
