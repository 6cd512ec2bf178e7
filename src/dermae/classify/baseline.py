"""`dermae train`: a plain timm classifier on the real train split — the bar dermae must clear."""

from __future__ import annotations

from pathlib import Path

from dermae.classify.common import LOSSES, ClassificationTask, loss_setup
from dermae.classify.model import build_classifier, classifier_config
from dermae.classify.trainer import Recipe, TrainSetup, train_classifier
from dermae.config import BaselineConfig, Config, to_dict

__all__ = ["LOSSES", "baseline_recipe", "loss_setup", "train_baseline"]


def baseline_recipe(stage_cfg: BaselineConfig, synthetic_ratio: float = 0.0) -> Recipe:
    return Recipe(
        loss=stage_cfg.loss,
        augment=stage_cfg.augment,
        train=stage_cfg.train,
        synthetic_ratio=synthetic_ratio,
    )


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
    recipe = baseline_recipe(stage_cfg, synthetic_ratio)

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
