"""Longer real-data runs (`make test-slow`): a bigger HAM10000 subset than the smoke test.

1. The stage commands as a user types them: a changed lr and a new split retrain, the same
   command again is skipped, and `dermae run` afterwards retrains what the commands changed.
2. The whole pipeline on the bigger subset, with enough baseline steps for the loss to fall.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from dermae.config import default_data_root
from dermae.pipeline import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(default_data_root())
if not DATA.is_absolute():
    DATA = (ROOT / DATA).resolve()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "labels.csv").exists(), reason=f"HAM10000 not at {DATA}"),
]
BIGGER = ["--set", "data.limit=1000", "--set", "baseline.loss=weighted_ce"]


def _dermae(*args: str, run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DERMAE_DATA": str(DATA), "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "dermae.cli", *args, "-c", str(ROOT / "configs/smoke.yaml")]
    cmd += ["--run-dir", str(run_dir), *BIGGER]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "baseline" / "model" / "model.safetensors"))


def _differ(a: dict, b: dict) -> bool:
    return any(not a[k].equal(b[k]) for k in a)


def test_stage_commands_retrain_on_changed_lr_and_split(tmp_path):
    run = tmp_path / "run"
    steps = ["--set", "baseline.train.max_steps=40"]
    _dermae("data", "prepare", run_dir=run)
    _dermae("train", *steps, run_dir=run)
    first = _weights(run)
    again = _dermae("train", *steps, run_dir=run)
    assert "baseline: done earlier, skipped" in again.stdout

    changed = _dermae("train", *steps, "--set", "baseline.train.lr=0.0123", run_dir=run)
    assert "baseline.train.lr" in changed.stdout and "running it again" in changed.stdout
    lr_weights = _weights(run)
    assert _differ(first, lr_weights)
    logged = [json.loads(x) for x in (run / "baseline" / "train" / "metrics.jsonl").open()]
    assert [r["step"] for r in logged if "loss" in r][-1] == 40  # all 40 steps trained again

    # A new split: the checkpoint trained on the old one must not be reused.
    split = ["--set", "data.split_seed=1"]
    _dermae("data", "prepare", *split, run_dir=run)
    resplit = _dermae("train", *steps, *split, "--set", "baseline.train.lr=0.0123", run_dir=run)
    assert "running it again" in resplit.stdout
    assert _differ(lr_weights, _weights(run))


def test_whole_pipeline_on_a_bigger_subset(tmp_path):
    run = tmp_path / "run"
    _dermae("run", "--set", "baseline.train.max_steps=60", run_dir=run)
    for stage in STAGE_NAMES:
        assert json.loads((run / "stages" / f"{stage}.json").read_text())["fingerprint"]
    logged = [json.loads(x) for x in (run / "baseline" / "train" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2  # it learns on real images
    student = json.loads((run / "evaluate" / "student" / "metrics.json").read_text())
    manifest = pd.read_csv(run / "data" / "manifest.csv")
    assert student["split"] == "test" and student["n_images"] == (manifest["split"] == "test").sum()
    assert student["n_images"] > 200  # 1,000 lesions: ~20 % of their images
    again = _dermae("run", "--set", "baseline.train.max_steps=60", run_dir=run)
    assert again.stdout.count("done earlier, skipped") == len(STAGE_NAMES)
