"""Two training processes (torchrun, gloo on the CPU): both hold the same weights at the end, rank 0 writes the
run, and the run resumes on two processes with every rank's random state."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _cmd(tmp_path, *extra):
    return [sys.executable, "-m", "medseg3d", "train", str(REPO / "configs" / "demo.yaml"), "--nproc", "2", *extra,
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.budget=null",
            "--set", "preprocess.spacing=[6, 6, 6]", "--set", "train.patch_size=[32, 32, 32]",
            "--set", "model.params.base_filters=4", "--set", "infer.overlap=0", "--set", "train.tensorboard=false",
            "--set", "train.iters_per_epoch=2", "--set", "train.threads=1"]


def test_two_gloo_processes_train_in_step_and_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}  # a crash shows its stack
    run = tmp_path / "run"
    res = subprocess.run(_cmd(tmp_path, "--run-dir", str(run), "--set", "train.epochs=2"), env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "x 2 processes" in res.stdout and "ranks in sync" in res.stdout
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng_ranks"]) == 2
    assert ck["rng_ranks"][0]["sampler"] != ck["rng_ranks"][1]["sampler"]  # each rank draws its own batches

    res = subprocess.run(_cmd(tmp_path, "--resume", str(run), "--set", "train.epochs=3"), env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["epoch"]), int(r["iterations"])) for r in rows] == [(1, 2), (2, 4), (3, 6)]
