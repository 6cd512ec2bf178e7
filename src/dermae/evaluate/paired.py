"""Paired comparisons against the ablation's reference (b), from predictions alone.

Pure functions of `predictions.csv` frames (no training, no run directory), so the ablation,
the seed study and the benchmarks scripts all pair models by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from dermae.evaluate.bootstrap import paired_bootstrap
from dermae.metrics import scalar_metric_fn

# Variant (b), the simple fix: every other model is paired with it.
REFERENCE = "b_simple_fix"
# Threshold-free, so a paired difference never mixes two models' validation thresholds:
# the sensitivity where each model's test ROC reaches 90 % specificity.
ROC_SENSITIVITY = "malignant_roc_sensitivity@spec0.90"


def roc_sensitivity_at(
    specificity: float, malignant_index: list[int]
) -> Callable[[np.ndarray, np.ndarray], float | None]:
    """metric_fn part: sensitivity at the test-ROC point that first reaches `specificity`."""

    def metric(y_true: np.ndarray, probs: np.ndarray) -> float | None:
        risk = probs[:, malignant_index].sum(axis=1)
        positive = np.isin(y_true, malignant_index)
        if positive.all() or not positive.any():
            return None
        cut = np.quantile(risk[~positive], specificity, method="higher")
        return float((risk[positive] > cut).mean())

    return metric


def probs_of(predictions: pd.DataFrame) -> np.ndarray:
    """The class probabilities (the `p_*` columns) of a predictions frame."""
    return predictions[[c for c in predictions.columns if c.startswith("p_")]].to_numpy()


def paired_metric_fn(
    malignant_index: list[int], ece_bins: int, required_classes: np.ndarray
) -> Callable[[np.ndarray, np.ndarray], dict[str, float | None]]:
    """The scalars a paired comparison reports: argmax metrics (no stored thresholds, so
    every model is judged by one rule) plus the sensitivity at 90 % test specificity."""
    base_fn = scalar_metric_fn(malignant_index, None, ece_bins, required_classes=required_classes)
    roc_sens = roc_sensitivity_at(0.90, malignant_index)

    def metric_fn(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
        return {**base_fn(y, p), ROC_SENSITIVITY: roc_sens(y, p)}

    return metric_fn


def paired_against_reference(
    predictions: dict[str, pd.DataFrame],
    malignant_index: list[int],
    ece_bins: int,
    resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """`name - b` for every other model, on the same images and the same lesion resamples."""
    reference = predictions[REFERENCE]
    metric_fn = paired_metric_fn(malignant_index, ece_bins, np.unique(reference["target"]))
    comparisons = {}
    for name, frame in predictions.items():
        if name == REFERENCE:
            continue
        if list(frame["image_id"]) != list(reference["image_id"]):
            raise RuntimeError(f"{name} and {REFERENCE} were scored on different images")
        comparisons[f"{name} - {REFERENCE}"] = paired_bootstrap(
            metric_fn,
            reference["target"].to_numpy(),
            probs_of(reference),
            probs_of(frame),
            reference["group_id"].to_numpy(),
            n=resamples,
            seed=seed,
        )
    return comparisons
