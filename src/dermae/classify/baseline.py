"""`dermae train`: a plain timm classifier on the real train split — the bar dermae must clear."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dermae.classify.common import LOSSES, ClassificationTask, batch_mixup, loss_setup
from dermae.classify.model import (
    build_classifier,
    classifier_config,
    load_classifier,
    save_classifier,
)
from dermae.classify.trainer import Recipe, TrainSetup, train_classifier
from dermae.config import BaselineConfig, Config, to_dict, without_later_keys
from dermae.engine.checkpoint import load_config_json, process_rank
from dermae.layout import RunLayout

__all__ = [
    "LOSSES",
    "SIMPLE_FIXES",
    "baseline_seed_dirs",
    "chosen_loss",
    "loss_setup",
    "train_baseline",
    "train_baseline_seeds",
]
SEEDS_STAGE = "baseline_seeds"
SEEDS_FILE = "members.json"
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
    image_size: int | None = None,
) -> Path:
    """Train a timm classifier; returns the saved classifier folder `<run_dir>/<stage>/model`.

    `synthetic_ratio` exists for the ablation (real + synthetic, same recipe); `image_size`
    (default: the data's) for teacher members at a higher resolution and for the ablation's
    variants at the student's.
    """
    stage_cfg = stage_cfg or cfg.baseline
    if stage_cfg.loss == "auto":
        return _best_simple_fix(cfg, run_dir, stage, stage_cfg, synthetic_ratio, resume, image_size)
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
        mix = None
        if stage_cfg.mixup > 0:
            mix = batch_mixup(stage_cfg.mixup, len(setup.view.class_names))
        return ClassificationTask(model, setup.view.key, setup.class_weights, mix)

    trained = train_classifier(
        cfg,
        run_dir,
        stage,
        recipe,
        make_task,
        resume=resume,
        run_config={"stage": stage_settings(stage_cfg)},
        image_size=image_size,
    )
    return trained.model_dir


def stage_settings(stage_cfg: BaselineConfig) -> dict:
    """The stage config as the training fingerprint records it (config.LATER_KEYS)."""
    return without_later_keys("baseline", to_dict(stage_cfg))


def _best_simple_fix(
    cfg: Config,
    run_dir: str | Path,
    stage: str,
    stage_cfg: BaselineConfig,
    synthetic_ratio: float,
    resume: bool,
    image_size: int | None = None,
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
            image_size,
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


def baseline_seed_dirs(run_dir: str | Path, count: int) -> list[Path]:
    """The classifier folders of the `count` extra seeds of (b), in seed order."""
    return [Path(run_dir) / SEEDS_STAGE / f"seed_plus_{k}" / "model" for k in range(1, count + 1)]


def train_baseline_seeds(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Train `distill.baseline_seeds` more copies of (b), seeds `seed + 1`, `seed + 2`, ...

    Same model, loss (the one `baseline/model` was trained with, so `auto` is not re-decided),
    budget and checkpoint rule as the baseline; only the seed (initialisation, data order,
    augmentation draws) differs. They are teacher members, never (b): the ablation's reference
    stays the baseline itself. Returns `<run_dir>/baseline_seeds/` with `members.json`.
    """
    count = cfg.distill.baseline_seeds
    folder = Path(run_dir) / SEEDS_STAGE
    folder.mkdir(parents=True, exist_ok=True)
    loss = chosen_loss(run_dir, "baseline") if count else cfg.baseline.loss
    seed = cfg.baseline.train.seed or 0
    members = []
    for k, model_dir in enumerate(baseline_seed_dirs(run_dir, count), start=1):
        train_cfg = dataclasses.replace(cfg.baseline.train, seed=seed + k)
        member_cfg = dataclasses.replace(cfg.baseline, loss=loss, train=train_cfg)
        trained = train_baseline(
            cfg, run_dir, f"{SEEDS_STAGE}/{model_dir.parent.name}", member_cfg, resume=resume
        )
        selected = load_config_json(trained).get("selected") or {}
        members.append({"model": str(trained), "seed": seed + k, "loss": loss, **selected})
    if process_rank() == 0:  # under DDP every rank trains; one writes the record
        (folder / SEEDS_FILE).write_text(json.dumps({"loss": loss, "members": members}, indent=2))
    return folder
