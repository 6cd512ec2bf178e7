"""Operating thresholds on malignant risk, chosen on the validation split only."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from dermae.classify.common import TargetView, predict_probs
from dermae.metrics import choose_thresholds, malignant_risk


def attach_thresholds(
    model, val_set: Dataset, view: TargetView, specificities: tuple[float, ...]
) -> dict[str, Any]:
    """Checkpoint-config entries: thresholds at each target specificity, and the default one."""
    probs = predict_probs(model, val_set, desc="thresholds")
    risk = malignant_risk(probs, view.malignant_index)
    thresholds = choose_thresholds(val_set.malignant, risk, specificities)
    first = next(iter(thresholds))
    return {
        "thresholds": thresholds,
        "threshold": {
            "malignant_risk": thresholds[first],
            "operating_point": first,
            "chosen_on": "val",
        },
    }
