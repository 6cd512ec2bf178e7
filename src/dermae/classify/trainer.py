"""The one classifier trainer: baseline, teacher fine-tuning, distillation and every ablation
variant go through `train_classifier`.

What differs between them is the model and the task (plain or weighted CE, mixup, a teacher's
soft targets); what they share — rows, datasets, imbalance handling, the loop, validation
thresholds, the saved classifier folder — is written once here, so an ablation variant cannot
drift from the recipe it is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermae.classify.common import (
    TargetView,
    dataset_targets,
    loss_setup,
    target_view,
    val_evaluator,
)
from dermae.classify.model import Classifier, save_classifier
from dermae.classify.thresholds import attach_thresholds
from dermae.config import Config, TrainConfig
from dermae.data.batch_augment import augmenting_collate
from dermae.data.prepared import LesionDataset, PreparedData, load_prepared
from dermae.data.transforms import train_augment
from dermae.engine.checkpoint import seed_everything
from dermae.engine.loop import FitResult, fit

SELECT_METRIC = "balanced_accuracy"  # the loop logs it as val_balanced_accuracy


@dataclass(frozen=True)
class Recipe:
    """What every classifier stage decides the same way (and the ablation keeps fixed)."""

    loss: str  # ce | weighted_ce | balanced_sampler
    augment: bool
    train: TrainConfig
    synthetic_ratio: float = 0.0  # 0 = real rows only
    # False: synthetic rows get no hard-label loss (a teacher's soft targets only), so their
    # conditioning labels do not count towards the class weights either.
    synthetic_hard_labels: bool = True
    eval_batch_size: int = 256

    @classmethod
    def of(cls, section: Any, **changes: Any) -> Recipe:
        """The recipe fields a stage's config section holds (loss, augment, train, ...)."""
        found = {f.name: getattr(section, f.name) for f in fields(cls) if hasattr(section, f.name)}
        return cls(**{**found, **changes})


@dataclass
class TrainSetup:
    """What a task builder gets: the data it will train on and the loss weights."""

    prepared: PreparedData
    view: TargetView
    train_set: LesionDataset  # a task builder may swap it for a dataset of the same rows
    class_weights: torch.Tensor | None


@dataclass
class Trained:
    model_dir: Path
    model: Classifier
    result: FitResult
    train_rows: dict[str, int]


def uses_synthetic(cfg: Config, recipe: Recipe) -> bool:
    return cfg.data.include_synthetic and recipe.synthetic_ratio > 0


def train_classifier(
    cfg: Config,
    run_dir: str | Path,
    stage: str,
    recipe: Recipe,
    make_task: Callable[[TrainSetup], nn.Module],
    *,
    resume: bool = True,
    layer_decay: float | None = None,
    run_config: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
    desc: str | None = None,
    upstream: list[Path] | None = None,
    image_size: int | None = None,
    teacher_size: int | None = None,
) -> Trained:
    """Train the classifier `make_task(setup).model` into `<run_dir>/<stage>/`.

    Writes `<stage>/train/` (the loop's log and resumable state) and `<stage>/model/` (the
    classifier `train.select` keeps, best-by-validation or last step, with thresholds chosen
    on validation). `upstream`: model
    folders the task builds on (an encoder, a teacher); a checkpoint made on other upstream
    weights is not resumed. `image_size`: train at this resolution instead of the data's
    (real rows only; the images are cached at that size on first use). `teacher_size`: the
    train batches also carry "teacher_image", the same augmented view at that resolution.
    """
    run_dir = Path(run_dir)
    with_synth = uses_synthetic(cfg, recipe)
    prepared = load_prepared(run_dir, with_synthetic=with_synth)
    # Recorded only off the data's size, so checkpoints made before the option still resume.
    other_size = {"image_size": image_size} if image_size not in (None, prepared.image_size) else {}
    if other_size:
        if with_synth:
            raise ValueError(
                f"{stage}: synthetic images exist only at {prepared.image_size} px, so a model "
                f"at {image_size} px trains on real images only (synthetic_ratio 0)"
            )
        prepared = prepared.at_size(image_size)
    view = target_view(prepared, cfg.data.label)
    rows = prepared.rows(
        "train",
        include_synthetic=with_synth,
        synthetic_ratio=recipe.synthetic_ratio,
        seed=cfg.seed,
    )
    batched = recipe.augment and cfg.data.batch_augment
    augment = train_augment() if recipe.augment and not batched else None
    train_set = prepared.dataset(rows, augment, view_size=teacher_size)
    val_set = prepared.dataset(prepared.rows("val"))
    targets = dataset_targets(train_set, view.key)
    synthetic = (rows["source"] == "synthetic").to_numpy()
    hard = np.ones(len(rows), bool) if recipe.synthetic_hard_labels else ~synthetic
    # The sampler balances the real rows; synthetic ones come at their share of the rows.
    weights, sampler = loss_setup(recipe.loss, targets, len(view.class_names), hard, ~synthetic)

    seed_everything(recipe.train.seed)
    setup = TrainSetup(prepared, view, train_set, weights)
    task = make_task(setup)
    # A task may serve the same rows another way (distillation's cached teacher views).
    train_set = setup.train_set
    train_rows = {"real": int((~synthetic).sum()), "synthetic": int(synthetic.sum())}
    result = fit(
        task,
        train_set,
        recipe.train,
        run_dir / stage / "train",
        evaluate=val_evaluator(val_set, view, recipe.eval_batch_size),
        sampler_weights=sampler,
        collate_fn=augmenting_collate if batched else None,
        resume=resume,
        layer_decay=layer_decay,
        desc=desc or stage,
        run_config={
            "recipe": {
                "loss": recipe.loss,
                "augment": recipe.augment,
                "synthetic_ratio": recipe.synthetic_ratio,
                "synthetic_hard_labels": recipe.synthetic_hard_labels,
                # only when on, so checkpoints made before the option still resume
                **({"batch_augment": True} if batched else {}),
            },
            "label": cfg.data.label,
            "train_rows": train_rows,
            **other_size,
            **(run_config or {}),
        },
        select_metric=SELECT_METRIC,
        num_workers=cfg.data.num_workers,
        upstream=upstream or [],
    )
    model: Classifier = result.task.model  # the weights `train.select` chose
    extra = attach_thresholds(model, val_set, view, cfg.evaluate.specificities)
    extra = {
        **extra,
        "loss": recipe.loss,
        # The seed of weights, data order and augmentation: the seed studies name models by it.
        "train_seed": recipe.train.seed,
        "train_rows": train_rows,
        "best": result.best,
        "selected": result.selected,
        **(extra_config or {}),
    }
    model_dir = save_classifier(run_dir / stage / "model", model, extra)
    return Trained(model_dir, model, result, train_rows)


__all__ = ["Recipe", "TrainSetup", "Trained", "train_classifier", "uses_synthetic"]
