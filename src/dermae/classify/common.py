"""Pieces every classification stage shares: the task, loss weights, prediction, validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dermae.data.classes import class_sampling_weights
from dermae.data.prepared import PreparedData
from dermae.metrics import malignant_risk


@dataclass(frozen=True)
class TargetView:
    """Which label the classifier learns: the 7 diagnoses or malignant vs benign."""

    key: str  # batch key: "label" or "malignant"
    class_names: list[str]
    malignant_classes: list[str]

    @property
    def malignant_index(self) -> list[int]:
        return [i for i, c in enumerate(self.class_names) if c in self.malignant_classes]


def target_view(prepared: PreparedData, label: str) -> TargetView:
    if label == "diagnosis":
        return TargetView("label", prepared.class_names, prepared.malignant_classes)
    if label == "malignant":
        return TargetView("malignant", ["benign", "malignant"], ["malignant"])
    raise ValueError(f"data.label must be 'diagnosis' or 'malignant', got '{label}'")


def dataset_targets(dataset: Dataset, key: str) -> np.ndarray:
    return dataset.labels if key == "label" else dataset.malignant


def class_weights(targets: np.ndarray, num_classes: int, power: float = 0.5) -> torch.Tensor:
    """Inverse-frequency**power weights, mean 1 over samples (power 0.5 = sqrt, gentler than 1)."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, (counts.max() / np.maximum(counts, 1)) ** power, 0.0)
    weights = weights / (weights[targets].mean())
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sampler_weights(targets: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """Per-sample draw weights that make every class equally likely among the `counted` rows.

    Rows outside `counted` (soft-label-only synthetic images in distillation) are drawn
    uniformly at their share of the rows. Balancing over them too would let a class's
    synthetic images crowd out its real ones: with 1,101 synthetic and 80 real df images,
    93 % of df draws would carry no hard label.
    """
    if counted is None or np.all(counted):
        return class_sampling_weights(targets, 1.0)  # unnormalised: same seed, same order
    counted = np.asarray(counted, bool)
    weights = np.full(len(targets), 1.0 / len(targets))
    if counted.any():
        balanced = class_sampling_weights(targets[counted], 1.0)
        weights[counted] = balanced / balanced.sum() * counted.mean()
    return weights


LOSSES = ("ce", "weighted_ce", "balanced_sampler")


def loss_setup(
    loss: str,
    targets: np.ndarray,
    num_classes: int,
    counted: np.ndarray | None = None,
    balanced: np.ndarray | None = None,
) -> tuple[torch.Tensor | None, np.ndarray | None]:
    """(class weights or None, sampler weights or None) for a loss option.

    `counted` masks the rows whose labels define the class weights (rows with a hard-label
    loss). `balanced` (default: `counted`) masks the rows the balanced sampler balances by
    class; it still draws every other row, uniformly at its share.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss '{loss}'; choose one of {LOSSES}")
    counted_targets = targets if counted is None else targets[counted]
    weights = class_weights(counted_targets, num_classes) if loss == "weighted_ce" else None
    sampler = None
    if loss == "balanced_sampler":
        sampler = balanced_sampler_weights(targets, counted if balanced is None else balanced)
    return weights, sampler


def batch_mixup(alpha: float, num_classes: int) -> Callable:
    """(images, targets) -> (each image blended with the batch reversed, soft targets);
    lam ~ Beta(alpha, alpha) per batch: distillation's mixup (`distill.mixup`) without the
    teacher, so "(b) + mixup" is its control."""

    def mix(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        one_hot = F.one_hot(targets, num_classes).float()
        return (
            lam * images + (1 - lam) * images.flip(0),
            lam * one_hot + (1 - lam) * one_hot.flip(0),
        )

    return mix


class ClassificationTask(nn.Module):
    """Cross-entropy on one target view; optional class weights and soft (mixup) targets."""

    def __init__(
        self,
        model: nn.Module,
        target_key: str,
        weights: torch.Tensor | None = None,
        mix: Callable | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.target_key = target_key
        self.mix = mix
        self.label_smoothing = label_smoothing
        self.register_buffer("weights", weights if weights is not None else torch.empty(0))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, targets = batch["image"], batch[self.target_key]
        weight = self.weights if self.weights.numel() else None
        if self.mix is not None and self.training:
            images, soft = self.mix(images, targets)  # soft: [N, C]
            logits = self.model(images)
            per_sample = -(soft * F.log_softmax(logits.float(), dim=-1))
            if weight is not None:
                per_sample = per_sample * weight
            return {"loss": per_sample.sum(-1).mean(), "logits": logits}
        logits = self.model(images)
        loss = F.cross_entropy(
            logits.float(), targets, weight=weight, label_smoothing=self.label_smoothing
        )
        return {"loss": loss, "logits": logits}


@torch.no_grad()
def predict_probs(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, desc: str = "predict"
) -> np.ndarray:
    """Softmax probabilities [N, C] of `model` (takes [0,1] images) over `dataset`."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=len(loader) < 5):
        logits = model(batch["image"].to(device))
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def quick_scores(
    probs: np.ndarray, targets: np.ndarray, malignant: np.ndarray, malignant_index: list[int]
) -> dict[str, float]:
    """The two numbers used to pick a checkpoint on validation."""
    scores = {"balanced_accuracy": float(balanced_accuracy_score(targets, probs.argmax(1)))}
    if len(np.unique(malignant)) == 2:
        scores["malignant_auroc"] = float(
            roc_auc_score(malignant, malignant_risk(probs, malignant_index))
        )
    return scores


def val_evaluator(
    dataset: Dataset, view: TargetView, batch_size: int = 256
) -> Callable[[nn.Module], dict[str, float]]:
    """A callable for `fit(evaluate=...)`: scores of `task.model` on the validation set."""
    targets = dataset_targets(dataset, view.key)

    def evaluate(task: nn.Module) -> dict[str, float]:
        probs = predict_probs(task.model, dataset, batch_size, desc="val")
        return quick_scores(probs, targets, dataset.malignant, view.malignant_index)

    return evaluate
