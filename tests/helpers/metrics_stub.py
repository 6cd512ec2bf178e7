"""Stand-in for `dermae.evaluate.metrics` while that module is still on its own branch.

`install_if_missing()` does nothing once the real module imports; delete this file then.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np


def _malignant_risk(probs, malignant_index) -> np.ndarray:
    return np.asarray(probs, dtype=np.float64)[:, list(malignant_index)].sum(axis=1)


def _choose_thresholds(y_malignant, risk, specificities) -> dict[str, float]:
    benign = np.asarray(risk)[np.asarray(y_malignant) == 0]
    return {f"spec@{s:.2f}": float(np.quantile(benign, s)) for s in specificities}


def install_if_missing() -> bool:
    """Put the stand-in into sys.modules unless the real module exists; True if installed."""
    try:
        importlib.import_module("dermae.evaluate.metrics")
        return False
    except ModuleNotFoundError:
        pass
    package = types.ModuleType("dermae.evaluate")
    package.__path__ = []
    module = types.ModuleType("dermae.evaluate.metrics")
    module.malignant_risk = _malignant_risk
    module.choose_thresholds = _choose_thresholds
    package.metrics = module
    sys.modules.setdefault("dermae.evaluate", package)
    sys.modules["dermae.evaluate.metrics"] = module
    return True
