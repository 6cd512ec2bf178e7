"""`dermae finetune`: the ViT teacher classifier, from the MAE encoder (or from scratch).

Writes `<run_dir>/finetune/` (the shared loop's log + resumable state) and the teacher
checkpoint `<run_dir>/teacher/` (classifier format, see `dermae.classify.model`).

Transfer is checked, not trusted: loading the encoder must leave exactly the classifier head
(and fc_norm, when global_pool="avg" adds one) newly initialised; with avg pooling the
encoder's final `norm` is dropped on purpose (MAE fine-tuning recipe). Any other missing or
unexpected key raises `TransferError` naming the keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import balanced_accuracy_score
from timm.data import Mixup
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dermae.classify.model import Classifier, build_classifier, classifier_config, save_classifier
from dermae.config import Config, FinetuneConfig, to_dict
from dermae.data.prepared import PreparedData, load_prepared
from dermae.data.transforms import train_augment
from dermae.engine.checkpoint import MODEL_FILE, load_config_json, seed_everything
from dermae.pretrain.mae import resolve_vit
from dermae.pretrain.train import encoder_dir

FINETUNE_DIR = "finetune"
TEACHER_DIR = "teacher"
SELECT_METRIC = "val_balanced_accuracy"
LOSSES = ("ce", "weighted_ce", "balanced_sampler")
POOLS = ("avg", "token")
# Keys of a timm ViT that a fine-tuned classifier adds on top of the pre-trained encoder.
NEW_KEY_PREFIXES = ("head.", "fc_norm.")


class TransferError(RuntimeError):
    """Encoder weights do not fit the classifier the way fine-tuning expects."""


# ----------------------------------------------------------------------------- model


def teacher_config(fcfg: FinetuneConfig, prepared: PreparedData) -> dict[str, Any]:
    if fcfg.global_pool not in POOLS:
        raise ValueError(f"finetune.global_pool must be one of {POOLS}, got '{fcfg.global_pool}'")
    arch, kwargs = resolve_vit(fcfg.model)
    drop_path = 0.0 if fcfg.linear_probe else fcfg.drop_path
    model_kwargs = {**kwargs, "global_pool": fcfg.global_pool, "drop_path_rate": drop_path}
    return classifier_config(
        arch, prepared.class_names, prepared.malignant_classes, prepared.image_size, model_kwargs
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


def load_encoder(net: nn.Module, directory: str | Path) -> dict[str, list[str]]:
    """Load a `vit_encoder` checkpoint into the timm ViT `net`; returns {"new", "dropped"} keys."""
    directory = Path(directory)
    config = load_config_json(directory)
    if config.get("kind") != "vit_encoder":
        raise TransferError(
            f"{directory} holds a '{config.get('kind')}' checkpoint, not a vit_encoder: "
            "run `dermae pretrain` first or use finetune.init=scratch"
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


# ----------------------------------------------------------------------------- loss


def class_weights(labels: np.ndarray, num_classes: int, power: float = 0.5) -> torch.Tensor:
    """Inverse-frequency^power class weights (0.5: sqrt), mean 1 over present classes."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(float)
    weights = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    weights = weights / weights[counts > 0].mean()
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sample_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weight 1/count(class): each class drawn equally often."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    return 1.0 / counts[labels]


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """CE with soft targets [N, C]; with class weights it is sum_n,c w_c y_nc (-log p_nc) divided
    by sum_n,c w_c y_nc, which equals F.cross_entropy(weight=w) for one-hot targets."""
    logp = F.log_softmax(logits.float(), dim=-1)
    targets = targets.float()
    if weight is None:
        return -(targets * logp).sum(-1).mean()
    wy = targets * weight.to(logp.device).view(1, -1)
    return -(wy * logp).sum() / wy.sum().clamp_min(1e-12)


def one_hot_smooth(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(
        1, labels.view(-1, 1), 1.0 - smoothing + off
    )


class FinetuneTask(nn.Module):
    """batch {"image" in [0, 1], "label"} -> {"loss", "logits"}; mixup/cutmix in training only."""

    def __init__(
        self,
        model: Classifier,
        weight: torch.Tensor | None = None,
        mixup: Mixup | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.mixup = mixup
        self.label_smoothing = label_smoothing
        self.num_classes = int(model.config["num_classes"])
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"]
        if self.training and self.mixup is not None and images.shape[0] % 2 == 0:
            images, targets = self.mixup(images, labels)  # timm Mixup needs an even batch
        else:
            targets = one_hot_smooth(labels, self.num_classes, self.label_smoothing)
        logits = self.model(images)
        return {"loss": soft_cross_entropy(logits, targets, self.weight), "logits": logits}


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], labels [N]) of a dataset, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(batch["image"].to(device))
        probs.append(logits.float().softmax(-1).cpu().numpy())
        labels.append(batch["label"].numpy())
    model.train(was_training)
    return np.concatenate(probs), np.concatenate(labels)


def val_evaluator(
    dataset: Dataset, batch_size: int = 256
) -> Callable[[nn.Module], dict[str, float]]:
    """callable(task) -> {"val_balanced_accuracy", "val_accuracy"} on the validation split."""

    def evaluate(task: nn.Module) -> dict[str, float]:
        probs, labels = predict(task.model, dataset, batch_size)
        pred = probs.argmax(1)
        return {
            SELECT_METRIC: float(balanced_accuracy_score(labels, pred)),
            "val_accuracy": float((pred == labels).mean()),
        }

    return evaluate


# ----------------------------------------------------------------------------- entry


def build_task(
    cfg: Config, prepared: PreparedData, train_labels: np.ndarray, run_dir: str | Path
) -> tuple[FinetuneTask, dict[str, Any]]:
    """The classifier (MAE-initialised or scratch, optionally frozen) wrapped in its task."""
    fcfg = cfg.finetune
    if fcfg.init not in ("mae", "scratch"):
        raise ValueError(f"finetune.init must be 'mae' or 'scratch', got '{fcfg.init}'")
    if fcfg.loss not in LOSSES:
        raise ValueError(f"finetune.loss must be one of {LOSSES}, got '{fcfg.loss}'")
    seed_everything(fcfg.train.seed)
    model = build_classifier(teacher_config(fcfg, prepared))
    info: dict[str, Any] = {"init": fcfg.init, "linear_probe": fcfg.linear_probe}
    if fcfg.init == "mae":
        source = encoder_dir(run_dir)
        info["encoder"] = str(source)
        info["new_keys"] = load_encoder(model.net, source)["new"]
    if fcfg.linear_probe:
        freeze_for_linear_probe(model.net)
    weight = (
        class_weights(train_labels, prepared.num_classes) if fcfg.loss == "weighted_ce" else None
    )
    mixup = None
    if fcfg.mixup > 0 or fcfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=fcfg.mixup,
            cutmix_alpha=fcfg.cutmix,
            label_smoothing=fcfg.label_smoothing,
            num_classes=prepared.num_classes,
        )
    return FinetuneTask(model, weight, mixup, fcfg.label_smoothing), info


def finetune(cfg: Config, run_dir: str | Path) -> Path:
    """Fine-tune (or linear-probe, or train from scratch) the ViT teacher; returns teacher dir."""
    from dermae.engine.loop import fit  # the shared loop (engine/loop.py)

    run_dir = Path(run_dir)
    fcfg = cfg.finetune
    prepared = load_prepared(run_dir)
    rows = prepared.rows(
        "train",
        include_synthetic=cfg.data.include_synthetic and fcfg.synthetic_ratio > 0,
        synthetic_ratio=fcfg.synthetic_ratio,
        seed=cfg.seed,
    )
    train_set = prepared.dataset(rows, train_augment() if fcfg.augment else None)
    val_set = prepared.dataset(prepared.rows("val"))
    labels = train_set.labels

    task, info = build_task(cfg, prepared, labels, run_dir)
    net = task.model.net
    result = fit(
        task,
        train_set,
        fcfg.train,
        run_dir / FINETUNE_DIR,
        model=net,  # the timm ViT itself, so timm's layer grouping drives layer_decay
        evaluate=val_evaluator(val_set, fcfg.eval_batch_size),
        sampler_weights=(
            balanced_sample_weights(labels, prepared.num_classes)
            if fcfg.loss == "balanced_sampler"
            else None
        ),
        layer_decay=None if fcfg.linear_probe else fcfg.layer_decay,
        desc="finetune",
        run_config=to_dict(cfg),
        select_metric=SELECT_METRIC,
    )
    if result.model is not net:
        net.load_state_dict(result.model.state_dict())
    model = task.model.cpu()
    scores = val_evaluator(val_set, fcfg.eval_batch_size)(task)
    return save_classifier(run_dir / TEACHER_DIR, model, {"finetune": {**info, **scores}})


__all__ = [
    "TransferError",
    "FinetuneTask",
    "balanced_sample_weights",
    "build_task",
    "check_transfer",
    "class_weights",
    "finetune",
    "freeze_for_linear_probe",
    "load_encoder",
    "predict",
    "soft_cross_entropy",
    "teacher_config",
    "val_evaluator",
]
