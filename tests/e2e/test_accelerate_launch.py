"""`accelerate launch` with 2 CPU processes (gloo) runs a training stage end to end.

On a machine without GPUs, `--multi_gpu` is what makes accelerate start one process per
rank (through torchrun); `Accelerator(cpu=True)` then trains them over gloo, as on a GPU box.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dermae.classify.model import load_classifier
from dermae.config import default_data_root

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(default_data_root())
if not DATA.is_absolute():
    DATA = (ROOT / DATA).resolve()

pytestmark = pytest.mark.skipif(
    not (DATA / "labels.csv").exists(), reason=f"HAM10000 not found at {DATA}"
)


def _env() -> dict[str, str]:
    return {**os.environ, "DERMAE_DATA": str(DATA), "PYTHONPATH": str(ROOT / "src")}


def _dermae(*args: str, run_dir: Path, launch: list[str] | None = None):
    config = ["-c", str(ROOT / "configs/smoke.yaml"), "--run-dir", str(run_dir)]
    cmd = [sys.executable, *(launch or []), "-m", "dermae.cli", *args, *config]
    return subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_accelerate_launch_two_cpu_processes_trains_the_baseline(tmp_path):
    run_dir = tmp_path / "run"
    prepared = _dermae("data", "prepare", run_dir=run_dir)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--main_process_port", "29531"]
    trained = _dermae("train", run_dir=run_dir, launch=launch)
    errors = [x for x in trained.stderr.splitlines() if "dermae: error" in x]
    assert trained.returncode == 0, "\n".join(errors) + trained.stderr[-2000:]
    assert trained.stdout.count("[dermae] baseline: finished") == 1  # rank 0 reports once

    # baseline/train, or baseline/<loss>/train when baseline.loss=auto tries several
    state = next((run_dir / "baseline").glob("**/checkpoint/training_state"))
    rng = [load_file(str(state / f"rng_{rank}.safetensors"))["torch"] for rank in (0, 1)]
    assert not torch.equal(rng[0], rng[1])  # each rank kept its own stream
    model, config = load_classifier(run_dir / "baseline" / "model")
    assert config["arch"] == "resnet10t" and model.net.fc.out_features == config["num_classes"]
    mark = json.loads((run_dir / "stages" / "baseline.json").read_text())
    assert "model.safetensors" in mark["files"]

    again = _dermae("train", run_dir=run_dir)  # one process: done, same fingerprint
    assert again.returncode == 0, again.stderr[-3000:]
    assert "baseline: done earlier, skipped" in again.stdout
