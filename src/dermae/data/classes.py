"""Class vocabulary. HAM10000's seven diagnoses, in the ISIC 2018 order."""

from __future__ import annotations

import numpy as np

HAM10000_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# akiec (actinic keratosis / Bowen's disease) counted malignant: the usual binary mapping.
# "malignant" names the positive class of binary (benign/malignant) datasets and label mode.
MALIGNANT_CODES: frozenset[str] = frozenset({"mel", "bcc", "akiec", "scc", "malignant"})
CLASS_DESCRIPTIONS: dict[str, str] = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
    "scc": "squamous cell carcinoma",
}


def malignant_mask(class_names: list[str] | tuple[str, ...]) -> list[bool]:
    return [name in MALIGNANT_CODES for name in class_names]


def class_sampling_weights(targets: np.ndarray, power: float) -> np.ndarray:
    """Per-row draw weights ~ count(class)^-power.

    power 0 keeps the natural frequencies, 1 makes every class equally likely, 0.5 is
    square-root balancing.
    """
    counts = np.bincount(targets)
    return counts[targets].astype(np.float64) ** -power
