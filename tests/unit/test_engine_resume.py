"""`fit` resumes or reuses a checkpoint only when its fingerprint matches; damage is a clear error."""

import dataclasses

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dermae.config import TrainConfig, load_config
from dermae.data.prepared import load_prepared
from dermae.engine.checkpoint import CheckpointError
from dermae.engine.loop import fit
from tests.helpers.tiny_data import make_prepared
from tests.helpers.tiny_fit import PointsDataset, RegressionTask

CFG = TrainConfig(max_steps=4, batch_size=8, lr=5e-2, log_every=1, seed=0)


def _fit(out, cfg=CFG, task=None, data=None, **kw):
    torch.manual_seed(0)  # the model's initial weights, as a stage seeds them before fit
    task = task or RegressionTask()
    return fit(task, data or PointsDataset(), cfg, out, desc="t", **kw)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_finished_checkpoint_with_same_settings_is_reused(tmp_path):
    first = _fit(tmp_path)
    again = _fit(tmp_path)
    assert again.history == []  # nothing retrained
    assert _same(first.model, again.model)


def test_changed_lr_retrains(tmp_path, capsys):
    _fit(tmp_path / "run")
    changed = dataclasses.replace(CFG, lr=1e-2)
    capsys.readouterr()
    result = _fit(tmp_path / "run", changed)
    assert "not resuming" in capsys.readouterr().out
    assert len(result.history) == 4  # all four steps trained again
    fresh = _fit(tmp_path / "fresh", changed)
    assert _same(result.model, fresh.model)  # bit-identical to a run that never saw the old one


def test_reason_names_the_changed_key(tmp_path, capsys):
    _fit(tmp_path, run_config={"stage": {"alpha": 0.7}})
    capsys.readouterr()
    _fit(tmp_path, run_config={"stage": {"alpha": 0.5}})
    line = next(x for x in capsys.readouterr().out.splitlines() if "not resuming" in x)
    assert "run.stage.alpha 0.7 -> 0.5" in line


def test_changed_seed_retrains_with_other_weights(tmp_path):
    a = _fit(tmp_path / "a")
    b = _fit(tmp_path / "a", dataclasses.replace(CFG, seed=1))
    assert len(b.history) == 4
    assert not _same(a.model, b.model)


def test_changed_architecture_trains_afresh_instead_of_crashing(tmp_path, capsys):
    _fit(tmp_path)
    wider = RegressionTask()
    wider.model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    capsys.readouterr()
    result = _fit(tmp_path, task=wider)
    assert "architecture changed" in capsys.readouterr().out
    assert result.model[0].weight.shape == (32, 8) and len(result.history) == 4


@pytest.mark.parametrize("damage", ["truncate_model", "empty_optimizer", "missing_config"])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    _fit(tmp_path)
    ckpt = tmp_path / "checkpoint"
    if damage == "truncate_model":
        path = ckpt / "model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "empty_optimizer":
        path = ckpt / "training_state" / "optimizer.pt"
        path.write_bytes(b"")
    else:
        path = ckpt / "config.json"
        path.unlink()
    with pytest.raises(CheckpointError) as info:
        _fit(tmp_path)
    assert str(path) in str(info.value) and "rerun with --no-resume" in str(info.value)
    assert len(_fit(tmp_path, resume=False).history) == 4  # --no-resume: a fresh start works


def test_changed_split_never_reuses_weights(tmp_path, capsys):
    run = tmp_path / "run"
    make_prepared(run, n_per_class=10, size=8)

    def train(out):
        data = load_prepared(run)
        task = ImageTask()
        return _fit(out, task=task, data=data.dataset(data.rows("train")))

    first = train(tmp_path / "fit")
    # A new split: one validation lesion becomes training data.
    manifest_path = run / "data" / "manifest.csv"
    manifest = pd.read_csv(manifest_path)
    val_lesion = manifest.loc[manifest["split"] == "val", "group_id"].iloc[0]
    manifest.loc[manifest["group_id"] == val_lesion, "split"] = "train"
    manifest.to_csv(manifest_path, index=False)
    capsys.readouterr()
    second = train(tmp_path / "fit")
    assert "training data" in capsys.readouterr().out
    assert len(second.history) == 4
    assert _same(second.model, train(tmp_path / "fresh").model)
    assert not _same(first.model, second.model)


class ImageTask(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Linear(3 * 8 * 8, 3)

    def forward(self, batch):
        logits = self.model(batch["image"].flatten(1))
        return {"loss": nn.functional.cross_entropy(logits, batch["label"])}


def test_stale_best_weights_are_dropped_on_a_fresh_start(tmp_path):
    def evaluate(task):
        return {"score": 1.0}

    _fit(tmp_path, evaluate=evaluate, select_metric="score")
    assert (tmp_path / "best").exists()
    other = dataclasses.replace(CFG, lr=1e-2)
    result = _fit(tmp_path, other, evaluate=lambda task: {}, select_metric="score")
    assert not (tmp_path / "best").exists() and result.best is None


def test_top_level_seed_reaches_every_stage():
    cfg = load_config(None, ["seed=1", "finetune.train.seed=7"])
    seeds = {
        name: getattr(cfg, name).train.seed
        for name in ("baseline", "vae", "ldm", "pretrain", "finetune", "distill")
    }
    assert seeds == {
        "baseline": 1,
        "vae": 1,
        "ldm": 1,
        "pretrain": 1,
        "finetune": 7,  # an explicit per-stage seed wins
        "distill": 1,
    }
    assert cfg.sample.seed == 1
    assert load_config(None, []).baseline.train.seed == 0
    # A YAML section that leaves the seed out still follows the top level.
    assert load_config(None, ["seed=3", "baseline.train.lr=0.1"]).baseline.train.seed == 3


def test_checkpoint_rng_is_per_rank(tmp_path):
    _fit(tmp_path)
    state = tmp_path / "checkpoint" / "training_state"
    assert (state / "rng_0.safetensors").exists()
    assert "torch" in load_file(str(state / "rng_0.safetensors"))
