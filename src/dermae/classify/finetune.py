"""`dermae finetune`: the ViT teacher classifier, from the MAE encoder (or from scratch).

Writes `<run_dir>/teacher/train/` (the shared loop's log, resumable state, best-by-val
weights) and the teacher checkpoint `<run_dir>/teacher/model/` (classifier format, see
`dermae.classify.model`, with validation thresholds).

Transfer is checked, not trusted: loading the encoder must leave exactly the classifier head
(and fc_norm, when global_pool="avg" adds one) newly initialised; with avg pooling the
encoder's final `norm` is dropped on purpose (MAE fine-tuning recipe). Any other missing or
unexpected key raises `TransferError` naming the keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from timm.data import Mixup
from torch import nn

from dermae.classify.common import (
    LOSSES,
    ClassificationTask,
    TargetView,
    class_weights,
    dataset_targets,
    target_view,
)
from dermae.classify.model import build_classifier, classifier_config
from dermae.classify.trainer import Recipe, TrainSetup, train_classifier
from dermae.config import Config, FinetuneConfig, to_dict
from dermae.data.prepared import PreparedData
from dermae.engine.checkpoint import MODEL_FILE, load_config_json, seed_everything
from dermae.layout import TEACHER
from dermae.pretrain.mae import resolve_vit
from dermae.pretrain.train import encoder_dir

POOLS = ("avg", "token")
# Keys of a timm ViT that a fine-tuned classifier adds on top of the pre-trained encoder.
NEW_KEY_PREFIXES = ("head.", "fc_norm.")


class TransferError(RuntimeError):
    """Encoder weights do not fit the classifier the way fine-tuning expects."""


# ----------------------------------------------------------------------------- model


def teacher_config(
    fcfg: FinetuneConfig, prepared: PreparedData, view: TargetView | None = None
) -> dict[str, Any]:
    if fcfg.global_pool not in POOLS:
        raise ValueError(f"finetune.global_pool must be one of {POOLS}, got '{fcfg.global_pool}'")
    arch, kwargs = resolve_vit(fcfg.model)
    drop_path = 0.0 if fcfg.linear_probe else fcfg.drop_path
    model_kwargs = {**kwargs, "global_pool": fcfg.global_pool, "drop_path_rate": drop_path}
    view = view or target_view(prepared, "diagnosis")
    return classifier_config(
        arch, view.class_names, view.malignant_classes, prepared.image_size, model_kwargs
    )


def _is_new(key: str) -> bool:
    return key.startswith(NEW_KEY_PREFIXES)


def check_transfer(
    net: nn.Module, missing: Iterable[str], unexpected: Iterable[str]
) -> dict[str, list[str]]:
    """Raise unless only the head (+ fc_norm) is missing and nothing but a dropped norm is extra."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    bad_missing = [k for k in missing if not _is_new(k)]
    # With avg pooling timm puts the final norm after the pool (fc_norm) and has no `norm`.
    dropped = (
        {"norm.weight", "norm.bias"}
        if isinstance(getattr(net, "norm", None), nn.Identity)
        else set()
    )
    bad_unexpected = [k for k in unexpected if k not in dropped]
    if bad_missing or bad_unexpected:
        raise TransferError(
            "encoder weights do not match the classifier: "
            f"missing (not head/fc_norm) = {bad_missing}, unexpected = {bad_unexpected}. "
            "Pre-train and fine-tune the same ViT (pretrain.model == finetune.model) at the same "
            "image size."
        )
    return {"new": missing, "dropped": unexpected}


# Classifier-only timm options: they change no weight the encoder holds.
HEAD_ONLY_KWARGS = ("global_pool", "drop_path_rate", "drop_rate", "fc_norm")


def load_encoder(
    net: nn.Module, directory: str | Path, expected: dict[str, Any] | None = None
) -> dict[str, list[str]]:
    """Load a `vit_encoder` checkpoint into the timm ViT `net`; returns {"new", "dropped"} keys.

    `expected` (the classifier config) is compared with the encoder's arch, kwargs and image
    size first, so that a mismatch is reported in config terms rather than tensor shapes.
    """
    directory = Path(directory)
    config = load_config_json(directory)
    if config.get("kind") != "vit_encoder":
        raise TransferError(
            f"{directory} holds a '{config.get('kind')}' checkpoint, not a vit_encoder: "
            "run `dermae pretrain` first or use finetune.init=scratch"
        )
    if expected is not None:
        body = {k: v for k, v in expected["model_kwargs"].items() if k not in HEAD_ONLY_KWARGS}
        mine = (expected["arch"], body, expected["image_size"])
        theirs = (config.get("arch"), config.get("model_kwargs"), config.get("image_size"))
        if mine != theirs:
            raise TransferError(
                f"encoder {directory} was pre-trained as (arch, kwargs, image_size) = {theirs}, "
                f"but the classifier is {mine}: set finetune.model to the pretrain.model used "
                "(and keep data.image_size), or use finetune.init=scratch"
            )
    state = load_file(str(directory / MODEL_FILE))
    own = net.state_dict()
    shape_errors = [
        f"{k}: encoder {tuple(v.shape)} vs classifier {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if shape_errors:
        raise TransferError(
            f"encoder {directory} (arch {config.get('arch')}, {config.get('model_kwargs')}, "
            f"image_size {config.get('image_size')}) has other shapes: {shape_errors[:5]}"
        )
    result = net.load_state_dict(state, strict=False)
    return check_transfer(net, result.missing_keys, result.unexpected_keys)


def freeze_for_linear_probe(net: nn.Module) -> list[str]:
    """Only the head (+ fc_norm) stays trainable; returns the trainable parameter names."""
    trainable = []
    for name, param in net.named_parameters():
        param.requires_grad_(_is_new(name))
        if param.requires_grad:
            trainable.append(name)
    return trainable


# ----------------------------------------------------------------------------- entry


def build_task(
    cfg: Config,
    prepared: PreparedData,
    train_targets: np.ndarray,
    run_dir: str | Path,
    weights: torch.Tensor | None = None,
    encoder: str | Path | None = None,
) -> tuple[ClassificationTask, dict[str, Any]]:
    """The classifier (MAE-initialised or scratch, optionally frozen) wrapped in its task.

    `weights` are the trainer's class weights; without them, `finetune.loss` decides from
    `train_targets`. `encoder` defaults to the run's `pretrain/encoder`.
    """
    fcfg = cfg.finetune
    if fcfg.init not in ("mae", "scratch"):
        raise ValueError(f"finetune.init must be 'mae' or 'scratch', got '{fcfg.init}'")
    if fcfg.loss not in LOSSES:
        raise ValueError(f"finetune.loss must be one of {LOSSES}, got '{fcfg.loss}'")
    view = target_view(prepared, cfg.data.label)
    seed_everything(fcfg.train.seed)
    model = build_classifier(teacher_config(fcfg, prepared, view))
    info: dict[str, Any] = {"init": fcfg.init, "linear_probe": fcfg.linear_probe}
    if fcfg.init == "mae":
        source = Path(encoder) if encoder is not None else encoder_dir(run_dir)
        info["encoder"] = str(source)
        info["new_keys"] = load_encoder(model.net, source, model.config)["new"]
    if fcfg.linear_probe:
        freeze_for_linear_probe(model.net)
    num_classes = len(view.class_names)
    if weights is None and fcfg.loss == "weighted_ce":
        weights = class_weights(train_targets, num_classes)
    mix = None
    if fcfg.mixup > 0 or fcfg.cutmix > 0:
        if fcfg.train.batch_size % 2:
            raise ValueError(
                f"finetune.train.batch_size={fcfg.train.batch_size}: mixup/cutmix need an even batch"
            )
        mix = Mixup(
            mixup_alpha=fcfg.mixup,
            cutmix_alpha=fcfg.cutmix,
            label_smoothing=fcfg.label_smoothing,
            num_classes=num_classes,
        )
    task = ClassificationTask(model, view.key, weights, mix, fcfg.label_smoothing)
    return task, info


def finetune(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = True,
    stage: str = TEACHER,
    encoder: str | Path | None = None,
) -> Path:
    """Fine-tune (or linear-probe, or train from scratch) the ViT teacher.

    Returns the teacher classifier folder `<run_dir>/<stage>/model`; `stage` and `encoder`
    let the ablation fine-tune other teachers (from scratch, or from another encoder).
    """
    fcfg = cfg.finetune
    info: dict[str, Any] = {}

    def make_task(setup: TrainSetup) -> ClassificationTask:
        task, built = build_task(
            cfg,
            setup.prepared,
            dataset_targets(setup.train_set, setup.view.key),
            run_dir,
            weights=setup.class_weights,
            encoder=encoder,
        )
        info.update(built)
        return task

    trained = train_classifier(
        cfg,
        run_dir,
        stage,
        Recipe.of(fcfg),
        make_task,
        resume=resume,
        layer_decay=None if fcfg.linear_probe else fcfg.layer_decay,
        run_config={"stage": to_dict(fcfg)},
        extra_config={"finetune": info},  # filled by make_task before the model is saved
        desc="finetune",
        upstream=[Path(encoder) if encoder is not None else encoder_dir(run_dir)]
        if fcfg.init == "mae"
        else [],
    )
    return trained.model_dir


__all__ = [
    "TransferError",
    "build_task",
    "check_transfer",
    "finetune",
    "freeze_for_linear_probe",
    "load_encoder",
    "teacher_config",
]
