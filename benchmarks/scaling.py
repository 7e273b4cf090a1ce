"""Training throughput with 1 and N processes (torch DistributedDataParallel through torchrun: gloo on CPUs,
NCCL on GPUs), measured in the same run, as the ratio of patches per second.

    python benchmarks/scaling.py [--nproc 2] [--iterations 40] [--config configs/demo.yaml] [--set key=value ...]

Each setting runs `medseg3d train CONFIG --nproc P` for the same number of iterations per process; patches per
second are taken from log.csv (iterations x batch size x processes / the epochs' seconds, the first epoch
left out as warm-up). On a CPU every process gets cores / P threads, so 1 process x 2 threads is compared with
2 processes x 1 thread (what DDP buys on a CPU is less oversubscription, not more cores).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(config: str, nproc: int, threads: int, iterations: int, per_epoch: int, extra: list[str],
        work: Path) -> dict:
    run_dir = work / f"p{nproc}_t{threads}"
    cmd = [sys.executable, "-m", "medseg3d", "train", config, "--nproc", str(nproc), "--run-dir", str(run_dir),
           "--set", f"train.iterations={iterations}", "--set", f"train.iters_per_epoch={per_epoch}",
           "--set", f"train.threads={threads}", "--set", "train.budget=null", "--set", "train.tensorboard=false",
           "--set", f"train.val_every={iterations}", "--set", f"data.cache_dir={work / 'cache'}"]
    for item in extra:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    with open(run_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    with open(run_dir / "config.yaml") as f:
        batch = next(int(line.split(":")[1]) for line in f if line.strip().startswith("batch_size:"))
    timed = rows[1:] or rows
    its = int(timed[-1]["iterations"]) - (int(rows[0]["iterations"]) if len(rows) > 1 else 0)
    seconds = sum(float(r["epoch_seconds"]) for r in timed)
    return {"processes": nproc, "threads": threads, "iterations": its, "seconds": seconds,
            "patches_per_s": its * batch * nproc / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--per-epoch", type=int, default=10)
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} cores; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(args.config, 1, 1, 4, 2, args.extra, work)  # fills the preprocessing cache
        results = [run(args.config, 1, cores, args.iterations, args.per_epoch, args.extra, work),
                   run(args.config, args.nproc, max(1, cores // args.nproc), args.iterations, args.per_epoch,
                       args.extra, work)]
    ref = results[0]["patches_per_s"]
    print(f"{'processes':>9} {'threads':>7} {'iterations':>10} {'seconds':>8} {'patches/s':>9} {'ratio':>6}")
    for r in results:
        print(f"{r['processes']:>9} {r['threads']:>7} {r['iterations']:>10} {r['seconds']:>8.1f} "
              f"{r['patches_per_s']:>9.2f} {r['patches_per_s'] / ref:>6.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
