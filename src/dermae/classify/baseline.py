"""`dermae train`: a plain timm classifier on the real train split — the bar dermae must clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dermae.classify.common import (
    ClassificationTask,
    balanced_sampler_weights,
    class_weights,
    dataset_targets,
    target_view,
    val_evaluator,
)
from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.classify.thresholds import attach_thresholds
from dermae.config import BaselineConfig, Config, to_dict
from dermae.data.prepared import load_prepared
from dermae.data.transforms import train_augment
from dermae.engine.checkpoint import seed_everything
from dermae.engine.loop import fit

LOSSES = ("ce", "weighted_ce", "balanced_sampler")


def loss_setup(
    loss: str, targets: np.ndarray, num_classes: int
) -> tuple[object, np.ndarray | None]:
    """(class weights or None, sampler weights or None) for a loss option."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss '{loss}'; choose one of {LOSSES}")
    weights = class_weights(targets, num_classes) if loss == "weighted_ce" else None
    sampler = balanced_sampler_weights(targets) if loss == "balanced_sampler" else None
    return weights, sampler


def train_baseline(
    cfg: Config,
    run_dir: str | Path,
    stage: str = "baseline",
    stage_cfg: BaselineConfig | None = None,
    include_synthetic: bool = False,
    resume: bool = True,
) -> Path:
    """Train a timm classifier; returns the saved classifier folder `<run_dir>/<stage>/model`.

    `include_synthetic` exists for the ablation (real + synthetic, same recipe).
    """
    stage_cfg = stage_cfg or cfg.baseline
    run_dir = Path(run_dir)
    prepared = load_prepared(run_dir, with_synthetic=include_synthetic)
    view = target_view(prepared, cfg.data.label)
    rows = prepared.rows(
        "train",
        include_synthetic=include_synthetic,
        synthetic_ratio=cfg.data.synthetic_ratio,
        seed=cfg.seed,
    )
    train_set = prepared.dataset(rows, train_augment() if stage_cfg.augment else None)
    val_set = prepared.dataset(prepared.rows("val"))
    targets = dataset_targets(train_set, view.key)
    weights, sampler = loss_setup(stage_cfg.loss, targets, len(view.class_names))

    seed_everything(stage_cfg.train.seed)
    model = build_classifier(
        classifier_config(
            stage_cfg.model,
            view.class_names,
            view.malignant_classes,
            prepared.image_size,
            {"drop_rate": stage_cfg.drop_rate},
        )
    )
    task = ClassificationTask(model, view.key, weights)
    out = run_dir / stage
    result = fit(
        task,
        train_set,
        stage_cfg.train,
        out / "train",
        evaluate=val_evaluator(val_set, view),
        sampler_weights=sampler,
        resume=resume,
        desc=stage,
        run_config={"stage": to_dict(stage_cfg), "include_synthetic": include_synthetic},
        select_metric="balanced_accuracy",
        num_workers=cfg.data.num_workers,
    )
    extra = attach_thresholds(result.model, val_set, view, cfg.evaluate.specificities)
    return save_classifier(out / "model", result.model, extra)
