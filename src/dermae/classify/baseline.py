"""`dermae train`: a plain timm classifier on the real train split — the bar dermae must clear."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dermae.classify.common import LOSSES, ClassificationTask, loss_setup
from dermae.classify.model import (
    build_classifier,
    classifier_config,
    load_classifier,
    save_classifier,
)
from dermae.classify.trainer import Recipe, TrainSetup, train_classifier
from dermae.config import BaselineConfig, Config, to_dict
from dermae.engine.checkpoint import load_config_json
from dermae.layout import RunLayout

__all__ = [
    "LOSSES",
    "SIMPLE_FIXES",
    "chosen_loss",
    "loss_setup",
    "train_baseline",
]
# The two standard fixes for class imbalance; `loss: auto` trains both and keeps the one with
# the better validation balanced accuracy (the test split never chooses).
SIMPLE_FIXES = ("weighted_ce", "balanced_sampler")


def train_baseline(
    cfg: Config,
    run_dir: str | Path,
    stage: str = "baseline",
    stage_cfg: BaselineConfig | None = None,
    synthetic_ratio: float = 0.0,
    resume: bool = True,
) -> Path:
    """Train a timm classifier; returns the saved classifier folder `<run_dir>/<stage>/model`.

    `synthetic_ratio` exists for the ablation (real + synthetic, same recipe).
    """
    stage_cfg = stage_cfg or cfg.baseline
    if stage_cfg.loss == "auto":
        return _best_simple_fix(cfg, run_dir, stage, stage_cfg, synthetic_ratio, resume)
    recipe = Recipe.of(stage_cfg, synthetic_ratio=synthetic_ratio)

    def make_task(setup: TrainSetup) -> ClassificationTask:
        model = build_classifier(
            classifier_config(
                stage_cfg.model,
                setup.view.class_names,
                setup.view.malignant_classes,
                setup.prepared.image_size,
                {"drop_rate": stage_cfg.drop_rate},
            )
        )
        return ClassificationTask(model, setup.view.key, setup.class_weights)

    trained = train_classifier(
        cfg,
        run_dir,
        stage,
        recipe,
        make_task,
        resume=resume,
        run_config={"stage": to_dict(stage_cfg)},
    )
    return trained.model_dir


def _best_simple_fix(
    cfg: Config,
    run_dir: str | Path,
    stage: str,
    stage_cfg: BaselineConfig,
    synthetic_ratio: float,
    resume: bool,
) -> Path:
    """Train each simple fix into `<stage>/<loss>/`; the better one on validation becomes
    `<stage>/model` (its config says which, with both scores)."""
    scores = {}
    for loss in SIMPLE_FIXES:
        folder = train_baseline(
            cfg,
            run_dir,
            f"{stage}/{loss}",
            dataclasses.replace(stage_cfg, loss=loss),
            synthetic_ratio,
            resume,
        )
        saved = load_config_json(folder)
        # The validation score of the weights kept (`train.select`); older folders: "best".
        scores[loss] = float((saved.get("selected") or saved.get("best") or {}).get("score", -1.0))
    best = max(scores, key=scores.get)
    model, config = load_classifier(Path(run_dir) / stage / best / "model")
    choice = {"chosen": best, "val_balanced_accuracy": scores, "rule": "better on validation"}
    return save_classifier(Path(run_dir) / stage / "model", model, {**config, "simple_fix": choice})


def chosen_loss(run_dir: str | Path, loss: str) -> str:
    """`loss`, or with loss 'baseline' the loss the run's baseline was trained with (so a
    student can share the baseline's imbalance handling, even when `auto` picked it)."""
    if loss != "baseline":
        return loss
    folder = RunLayout(run_dir).baseline_model
    used = load_config_json(folder).get("loss")
    if used not in LOSSES:
        raise ValueError(
            f"{folder} does not record its loss: retrain the baseline (`dermae train`), or set "
            "the loss explicitly instead of 'baseline'"
        )
    return used
