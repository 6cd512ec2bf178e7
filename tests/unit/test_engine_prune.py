"""`dermae prune`: finished trainings lose their optimizer state and are still reused as is;
unfinished ones are kept whole and still resume."""

import dataclasses
import json
import shutil

import pytest
import torch
from torch import nn

from dermae.cli import main
from dermae.config import TrainConfig
from dermae.engine.checkpoint import CheckpointError
from dermae.engine.loop import fit
from dermae.engine.prune import is_finished, prune_run
from tests.helpers.tiny_fit import PointsDataset, RegressionTask

CFG = TrainConfig(max_steps=4, batch_size=8, lr=5e-2, log_every=1, ckpt_every=2, seed=0)


class Stop(Exception):
    """Ends a fit after a checkpoint, as a killed process would."""


def _fit(out, cfg=CFG, **kw):
    torch.manual_seed(0)
    return fit(RegressionTask(), PointsDataset(), cfg, out, desc="t", **kw)


def _stop_at(step_to_stop: int):
    def on_step(step: int) -> None:
        if step == step_to_stop:
            raise Stop

    return on_step


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _state(run, name):
    return run / name / "checkpoint" / "training_state"


def _run_with_one_finished_and_one_stopped(run, cfg=CFG):
    """`done` as dermae wrote finished trainings before they dropped their optimizer state:
    an optimizer.pt and no `finished` mark; `stopped` killed after its step-2 checkpoint."""
    first = _fit(run / "done", cfg)
    with pytest.raises(Stop):
        _fit(run / "stopped", cfg, on_step=_stop_at(2))
    done = _state(run, "done")
    shutil.copy(_state(run, "stopped") / "optimizer.pt", done / "optimizer.pt")
    meta = json.loads((done / "state.json").read_text())
    del meta["progress"]["finished"]
    (done / "state.json").write_text(json.dumps(meta))
    return first


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_finished_training_keeps_no_optimizer_state_and_is_reused(tmp_path, ema):
    cfg = dataclasses.replace(CFG, ema_decay=ema)
    first = _fit(tmp_path, cfg)
    state = tmp_path / "checkpoint" / "training_state"
    assert not (state / "optimizer.pt").exists()
    assert json.loads((state / "state.json").read_text())["progress"]["finished"] is True
    again = _fit(tmp_path, cfg)
    assert again.history == [] and again.step == 4  # nothing retrained
    assert _same(first.model, again.model)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_pruned_finished_training_is_reused_with_the_same_weights(tmp_path, ema):
    cfg = dataclasses.replace(CFG, ema_decay=ema)
    first = _run_with_one_finished_and_one_stopped(tmp_path, cfg)
    optimizer = _state(tmp_path, "done") / "optimizer.pt"
    size = optimizer.stat().st_size

    report = prune_run(tmp_path)

    assert [(p.parent.name, s) for p, s in report.pruned] == [("done", size)]
    assert report.freed_bytes == size and not optimizer.exists()
    again = _fit(tmp_path / "done", cfg)
    assert again.history == []  # nothing retrained
    assert again.step == 4 and _same(first.model, again.model)


def test_unfinished_training_is_kept_whole_and_resumes(tmp_path):
    _run_with_one_finished_and_one_stopped(tmp_path)
    report = prune_run(tmp_path)
    assert [p.parent.name for p in report.unfinished] == ["stopped"]
    assert (_state(tmp_path, "stopped") / "optimizer.pt").exists()
    resumed = _fit(tmp_path / "stopped")
    assert [r["step"] for r in resumed.history] == [3, 4]  # went on from step 2
    assert _same(resumed.model, _fit(tmp_path / "uninterrupted").model)


def test_dry_run_deletes_nothing_and_a_second_prune_finds_nothing(tmp_path):
    _run_with_one_finished_and_one_stopped(tmp_path)
    optimizer = _state(tmp_path, "done") / "optimizer.pt"
    assert prune_run(tmp_path, dry_run=True).freed_bytes == optimizer.stat().st_size
    assert optimizer.exists()
    prune_run(tmp_path)
    second = prune_run(tmp_path)
    assert second.pruned == [] and second.already_slim == 1


def test_checkpoint_from_before_the_mark_counts_finished_by_its_step_budget(tmp_path):
    _run_with_one_finished_and_one_stopped(tmp_path)
    path = _state(tmp_path, "stopped") / "state.json"
    meta = json.loads(path.read_text())
    del meta["progress"]["finished"]
    path.write_text(json.dumps(meta))
    assert is_finished(tmp_path / "done" / "checkpoint")
    assert not is_finished(tmp_path / "stopped" / "checkpoint")
    report = prune_run(tmp_path)
    assert len(report.pruned) == 1 and len(report.unfinished) == 1
    meta = json.loads((_state(tmp_path, "done") / "state.json").read_text())
    assert meta["progress"]["finished"] is True  # marked, so the fit reuses it
    assert _fit(tmp_path / "done").history == []


def test_unfinished_training_without_its_optimizer_is_still_a_clear_error(tmp_path):
    with pytest.raises(Stop):
        _fit(tmp_path, on_step=_stop_at(2))
    path = tmp_path / "checkpoint" / "training_state" / "optimizer.pt"
    path.unlink()
    with pytest.raises(CheckpointError) as info:
        _fit(tmp_path)
    assert str(path) in str(info.value) and "--no-resume" in str(info.value)


def test_saves_in_progress_and_unreadable_states_are_left_alone(tmp_path):
    _run_with_one_finished_and_one_stopped(tmp_path)
    shutil.copytree(tmp_path / "done" / "checkpoint", tmp_path / "done" / "checkpoint.tmp")
    (_state(tmp_path, "stopped") / "state.json").write_text("{")
    report = prune_run(tmp_path)
    assert [p.parent.name for p, _ in report.pruned] == ["done"]
    assert (tmp_path / "done" / "checkpoint.tmp" / "training_state" / "optimizer.pt").exists()
    assert [p.parent.name for p, _ in report.unreadable] == ["stopped"]
    assert (_state(tmp_path, "stopped") / "optimizer.pt").exists()


def test_cli_prints_what_it_frees_and_what_it_keeps(tmp_path, capsys):
    _run_with_one_finished_and_one_stopped(tmp_path)
    capsys.readouterr()
    assert main(["prune", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 finished training(s), would free" in out
    assert "done/checkpoint" in out and "stopped/checkpoint" in out
    assert "1 unfinished training(s) kept whole" in out
    assert (_state(tmp_path, "done") / "optimizer.pt").exists()
    assert main(["prune", str(tmp_path)]) == 0
    assert "freed" in capsys.readouterr().out


def test_cli_names_a_missing_run_folder(tmp_path, capsys):
    assert main(["prune", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope is not a run folder" in err
