"""A training process killed (SIGKILL) or stopped (SIGTERM) mid-run resumes with `--resume`, and its log.csv
goes on with nothing repeated or skipped."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _train(tmp_path, run, *extra):
    cmd = [sys.executable, "-m", "medseg3d", "train", str(REPO / "configs" / "demo.yaml"), *extra,
           "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.budget=null",
           "--set", "preprocess.spacing=[6, 6, 6]", "--set", "train.patch_size=[32, 32, 32]",
           "--set", "model.params.base_filters=4", "--set", "infer.overlap=0", "--set", "train.tensorboard=false",
           "--set", "train.epochs=4", "--set", "train.iters_per_epoch=12", "--set", "train.val_every=4"]
    if run is not None:
        cmd += ["--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return cmd, env


def _rows(run):
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _wait_for_epoch(proc, run, timeout=240):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (run / "last.pt").is_file():  # (log.csv is written first, then last.pt)
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no epoch finished in time")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_or_stopped_training_resumes_continuously(tmp_path, sig):
    run = tmp_path / "run"
    cmd, env = _train(tmp_path, run)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(proc, run)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert "interrupted by SIGTERM" in err and f"--resume {run}" in err
        ck = torch.load(run / "last.pt", weights_only=True)
        assert ck["iteration"] > 12 or ck["epoch"] >= 1  # the cut epoch's steps were saved
    else:
        assert proc.returncode == -signal.SIGKILL
    done = torch.load(run / "last.pt", weights_only=True)["iteration"]
    assert done >= 12

    cmd, env = _train(tmp_path, None, "--resume", str(run))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["iterations"]) for r in rows] == [12, 24, 36, 48]
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 48
    assert (run / "validation_metrics.csv").is_file()
