"""`medseg3d train DATASET --budget B`: plan (with fake device timings: no timing in tests) and train in one step;
the plan is saved in the run folder and the run goes through to its final validation."""

import csv
from pathlib import Path

import yaml

from fake_costs import fake_timer

from medseg3d.plan import plan_and_train

REPO = Path(__file__).resolve().parents[2]


def test_train_dataset_plans_trains_and_saves_the_plan(tmp_path):
    out = []
    run = plan_and_train(REPO / "data_samples", budget="40s", device="cpu", run_dir=tmp_path / "run",
                         overrides=[f"data.cache_dir={tmp_path / 'cache'}", "train.tensorboard=false"],
                         log=out.append, cache_dir=tmp_path / "cache", timer=fake_timer())
    assert run == tmp_path / "run"
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["train"]["budget"] == "40s" and plan["model"]["name"] == "unet"
    assert (run / "plan.txt").read_text().splitlines()[0].split() == ["decision", "value", "because"]
    assert any(line.startswith("decision") for line in out)  # the table is shown to the user
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert rows and int(rows[-1]["iterations"]) > 0
    assert (run / "validation_metrics.csv").is_file() and list((run / "validation").glob("*.nii.gz"))
