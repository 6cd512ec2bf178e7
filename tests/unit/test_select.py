"""`train.select`: the loop hands back the best-by-validation weights or the last step's."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import dermae.classify.baseline as baseline_module
from dermae.classify.baseline import train_baseline
from dermae.config import ConfigError, TrainConfig, load_config
from dermae.engine.checkpoint import load_weights
from dermae.engine.loop import fit
from dermae.evaluate.ablation_text import ablation_markdown
from dermae.evaluate.summary import ablation_section
from tests.helpers.tiny_fit import PointsDataset, RegressionTask

CFG = TrainConfig(max_steps=6, batch_size=8, lr=5e-2, log_every=1, eval_every=2, seed=0)
SCORES = [0.2, 0.9, 0.5]  # validation at steps 2, 4, 6: the peak is mid-schedule


def _fit(out, select):
    scores = iter(SCORES)
    torch.manual_seed(0)
    return fit(
        RegressionTask(),
        PointsDataset(),
        dataclasses.replace(CFG, select=select),
        out,
        desc="t",
        evaluate=lambda task: {"score": next(scores)},
        select_metric="score",
    )


def _weights_equal(module: nn.Module, folder) -> bool:
    saved = RegressionTask().model
    load_weights(folder, saved)
    return all(
        torch.equal(a, b)
        for a, b in zip(module.state_dict().values(), saved.state_dict().values(), strict=True)
    )


def test_best_returns_the_peak_and_last_the_final_step(tmp_path):
    best = _fit(tmp_path / "best", "best")
    assert best.selected == {"rule": "best", "step": 4, "score": 0.9, "metric": "score"}
    assert _weights_equal(best.model, tmp_path / "best" / "best")
    last = _fit(tmp_path / "last", "last")
    assert last.selected == {"rule": "last", "step": 6, "score": 0.5, "metric": "score"}
    assert last.best["step"] == 4  # still recorded, and its weights still saved
    assert _weights_equal(last.model, tmp_path / "last" / "checkpoint")
    assert not _weights_equal(last.model, tmp_path / "last" / "best")
    # The training itself does not depend on the rule.
    assert _weights_equal(best.model, tmp_path / "last" / "best")


def test_switching_the_rule_reuses_the_finished_run(tmp_path):
    _fit(tmp_path, "best")
    switched = _fit(tmp_path, "last")
    assert switched.history == []  # nothing retrained: select is bookkeeping
    assert switched.selected == {"rule": "last", "step": 6, "score": 0.5, "metric": "score"}
    assert _weights_equal(switched.model, tmp_path / "checkpoint")
    back = _fit(tmp_path, "best")
    assert back.history == [] and back.selected["step"] == 4


def test_unknown_rule_names_the_key():
    with pytest.raises(ConfigError, match=r"distill\.train\.select"):
        load_config(None, ["distill.train.select=first"])


def test_auto_simple_fix_compares_the_kept_weights(tmp_path, monkeypatch):
    # Under `last`, weighted CE's best checkpoint was better, but its last one is worse.
    kept = {
        "weighted_ce": {"best": {"score": 0.50}, "selected": {"rule": "last", "score": 0.40}},
        "balanced_sampler": {"best": {"score": 0.47}, "selected": {"rule": "last", "score": 0.45}},
    }

    def fake_train(
        cfg, run_dir, stage, stage_cfg, synthetic_ratio=0.0, resume=True, image_size=None
    ):
        folder = tmp_path / stage / "model"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(
            json.dumps({"loss": stage_cfg.loss, **kept[stage_cfg.loss]})
        )
        return folder

    saved = {}
    monkeypatch.setattr(baseline_module, "train_baseline", fake_train)
    monkeypatch.setattr(
        baseline_module,
        "load_classifier",
        lambda folder: ("model", json.loads((folder / "config.json").read_text())),
    )
    monkeypatch.setattr(
        baseline_module, "save_classifier", lambda folder, model, config: saved.update(config)
    )
    cfg = load_config(None, ["baseline.loss=auto", f"run_dir={tmp_path}"])
    train_baseline(cfg, tmp_path)
    assert saved["loss"] == "balanced_sampler"
    assert saved["simple_fix"]["val_balanced_accuracy"] == {
        "weighted_ce": 0.40,
        "balanced_sampler": 0.45,
    }


def test_ablation_report_says_which_checkpoint_every_variant_keeps():
    summary = {
        "verdict": "- d - b: +0.002",
        "notes": {},
        "table": [],
        "paired_bootstrap": {},
        "checkpoint_rule": "last",
    }
    text = ablation_markdown(summary)
    assert "Checkpoint: every student variant keeps its last step's weights" in text
    assert "distill.train.select=last" in text


def test_run_report_states_the_checkpoint_rule(tmp_path):
    summary = {
        "student_arch": "resnet10t",
        "split": "test",
        "verdict": "- d - b: +0.002",
        "notes": {},
        "table": [],
        "results": {},
        "paired_bootstrap": {},
        "checkpoint_rule": "last",
    }
    (tmp_path / "ablate").mkdir()
    (tmp_path / "ablate" / "ablation.json").write_text(json.dumps(summary))
    section = ablation_section(tmp_path)
    assert any("keeps its last step's weights" in p for p in section.paragraphs)
