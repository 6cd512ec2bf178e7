import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dermae.config import TrainConfig
from dermae.engine.loop import steps_per_epoch, total_steps
from tests.helpers.tiny_fit import run

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_steps_arithmetic_matches_drop_last():
    cfg = TrainConfig(epochs=3, batch_size=8, grad_accum=2)
    assert steps_per_epoch(70, cfg) == 4  # 8 full batches -> 4 optimizer steps
    assert total_steps(70, cfg) == 12
    assert total_steps(5, TrainConfig(epochs=2, batch_size=8)) == 2  # one short batch per epoch
    assert total_steps(70, TrainConfig(max_steps=7)) == 7


def test_loss_falls_and_metrics_are_logged(tmp_path):
    result = run(tmp_path, steps=40)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    # The task's other scalar terms are logged beside the loss; tensors that are not are not.
    errors = [r["mae"] for r in result.history if "loss" in r]
    assert len(errors) == 40 and sum(errors[-5:]) < sum(errors[:5])
    assert not any("pred" in r for r in result.history)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 41))
    # Finished: the last checkpoint is only ever reused, so it holds no optimizer state.
    state = tmp_path / "checkpoint" / "training_state"
    assert json.loads((state / "state.json").read_text())["progress"]["finished"] is True
    assert not (state / "optimizer.pt").exists()


def test_reloading_a_finished_run_keeps_its_training_seconds(tmp_path):
    first = run(tmp_path, steps=6)
    again = run(tmp_path, steps=6)  # resumes at its last step: nothing left to train
    assert again.step == 6 and first.seconds > 0
    # The time saved with the last checkpoint, not the reload's few milliseconds.
    assert 0.5 * first.seconds < again.seconds < first.seconds + 1.0
    state = tmp_path / "checkpoint" / "training_state"
    assert any("seconds" in p.read_text() for p in state.glob("*.json"))


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    script = [sys.executable, "-m", "tests.helpers.tiny_fit"]
    subprocess.run(
        [*script, str(straight), "--steps", "14", "--ema", "0.9"], check=True, env=_env(), cwd=ROOT
    )
    died = subprocess.run(
        [*script, str(killed), "--steps", "14", "--ema", "0.9", "--kill-at", "8"],
        env=_env(),
        cwd=ROOT,
    )
    assert died.returncode == -signal.SIGKILL
    assert not (killed / "final").exists()
    subprocess.run(
        [*script, str(killed), "--steps", "14", "--ema", "0.9"], check=True, env=_env(), cwd=ROOT
    )
    a, b = _weights(straight / "final"), _weights(killed / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The log has each step exactly once after the resume.
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 15))


def test_two_process_ddp_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    script = ["-m", "tests.helpers.tiny_fit"]
    subprocess.run(
        [sys.executable, *script, str(one), "--steps", "6", "--no-jitter"],
        check=True,
        env=_env(),
        cwd=ROOT,
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    proc = subprocess.run(
        [*torchrun, *script, str(two), "--steps", "6", "--no-jitter"],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(proc.stderr[-3000:])
    a, b = _weights(one / "final"), _weights(two / "final")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_stages_with_different_precisions_run_in_one_process(tmp_path):
    from dermae.engine.loop import fit
    from tests.helpers.tiny_fit import PointsDataset, RegressionTask

    for precision in ("bf16", "no", "bf16"):
        cfg = TrainConfig(max_steps=2, batch_size=8, mixed_precision=precision, log_every=1)
        result = fit(RegressionTask(), PointsDataset(), cfg, tmp_path / precision, resume=False)
        assert result.step == 2


def _torchrun(*args: str, port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(port), "-m", "tests.helpers.tiny_fit", *args]
    return subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True)


def test_ddp_ranks_have_own_rng_streams_and_share_the_data_order(tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    script = [sys.executable, "-m", "tests.helpers.tiny_fit"]
    subprocess.run(
        [*script, str(one), "--steps", "6", "--record"], check=True, env=_env(), cwd=ROOT
    )
    proc = _torchrun(str(two), "--steps", "6", "--record", port=29518)
    if proc.returncode != 0:
        pytest.fail(proc.stderr[-3000:])
    single = json.loads((one / "draws_0.json").read_text())
    rank0, rank1 = (json.loads((two / f"draws_{r}.json").read_text()) for r in (0, 1))
    # Each rank draws its own numbers (masks, timesteps, augmentations differ across ranks)...
    assert len(rank0["draws"]) == 6 and rank0["draws"] != rank1["draws"]
    assert not set(rank0["draws"]) & set(rank1["draws"])
    # ...while every step still trains on the same global batch as one process would.
    for step, batch in enumerate(single["indices"]):
        assert sorted(rank0["indices"][step] + rank1["indices"][step]) == sorted(batch)
        assert not set(rank0["indices"][step]) & set(rank1["indices"][step])

    # Kill both ranks after step 4 (checkpoint at 3), resume: each rank restores its own RNG.
    died = _torchrun(str(killed), "--steps", "6", "--record", "--kill-at", "4", port=29519)
    assert died.returncode != 0
    assert (killed / "checkpoint" / "training_state" / "rng_1.safetensors").exists()
    resumed = _torchrun(str(killed), "--steps", "6", "--record", port=29520)
    if resumed.returncode != 0:
        pytest.fail(resumed.stderr[-3000:])
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = _weights(two / "final"), _weights(killed / "final")
    for key in a:
        assert torch.equal(a[key], b[key]), key
