"""Malignant risk, the one score every stage thresholds: defined once, numpy only.

A leaf module (no torch, pandas or scikit-learn), so the light deploy path (predict, serve)
and the metrics share one definition without importing each other's dependencies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def malignant_risk(probs: np.ndarray, malignant_index: Sequence[int]) -> np.ndarray:
    """probs [N, C] -> [N] float64: the summed probability of the malignant classes."""
    idx = list(malignant_index)
    if not idx:
        raise ValueError("malignant_index is empty: name at least one malignant class")
    return np.asarray(probs, dtype=np.float64)[:, idx].sum(axis=1)
