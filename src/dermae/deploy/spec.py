"""preprocess.json: everything a deployed model needs besides its weights.

The ONNX graph takes float32 [N, 3, S, S] RGB in [0, 1] and returns softmax
probabilities [N, C]; mean/std normalisation happens inside the graph. The file
records that, plus the resize rule, class names, malignant classes and the operating
threshold on the malignant risk (sum of malignant-class probabilities).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dermae.data.cache import CACHE_VERSION
from dermae.deploy.images import INTERPOLATION, RESIZE_METHOD

SPEC_FILE = "preprocess.json"
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "probs"
DEFAULT_THRESHOLD = 0.5


def threshold_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's validation-chosen threshold, or an explicit 0.5 default.

    Checkpoints store {"malignant_risk": t, "operating_point": "spec@0.90", "chosen_on":
    "val"} (dermae.classify.thresholds) and every operating point under "thresholds".
    """
    stored = config.get("threshold")
    if isinstance(stored, int | float):
        stored = {"malignant_risk": stored}
    if isinstance(stored, dict) and "malignant_risk" in stored:
        point = stored.get("operating_point") or ""
        specificity = stored.get("specificity")
        if specificity is None and point.startswith("spec@"):
            specificity = float(point.removeprefix("spec@"))
        chosen_on = stored.get("chosen_on", "val")
        return {
            "malignant_risk": float(stored["malignant_risk"]),
            "specificity": specificity,
            "source": stored.get("source")
            or ("validation" if chosen_on in ("val", "validation") else chosen_on),
            "operating_points": dict(config.get("thresholds") or {}),
        }
    return {
        "malignant_risk": DEFAULT_THRESHOLD,
        "specificity": None,
        "source": "default (the checkpoint holds no validation-chosen threshold)",
        "operating_points": {},
    }


def spec_from_config(
    config: dict[str, Any], threshold: dict[str, Any] | None = None
) -> dict[str, Any]:
    size = int(config["image_size"])
    classes = list(config["class_names"])
    malignant = list(config["malignant_classes"])
    return {
        "format_version": FORMAT_VERSION,
        "arch": config.get("arch"),
        "image_size": size,
        "resize": {
            "method": RESIZE_METHOD,
            "interpolation": INTERPOLATION,
            "description": "crop the centred square of side min(width, height) (odd margins: "
            "one pixel more right/below), then resize it to image_size x image_size "
            "(PIL bicubic); EXIF orientation applied first, transparency composited on black",
            "matches": f"dermae.data.cache.load_square (cache version {CACHE_VERSION})",
        },
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "color": "RGB",
            "range": [0.0, 1.0],
            "note": "uint8 pixels / 255; do not subtract mean/std, the model does that",
        },
        "normalization": {
            "mean": list(config["mean"]),
            "std": list(config["std"]),
            "inside_model": True,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(classes)],
            "softmax_inside_model": True,
        },
        "class_names": classes,
        "malignant_classes": malignant,
        "malignant_index": [i for i, c in enumerate(classes) if c in malignant],
        "threshold": threshold or threshold_from_config(config),
    }


def write_spec(out_dir: str | Path, spec: dict[str, Any]) -> Path:
    path = Path(out_dir) / SPEC_FILE
    path.write_text(json.dumps(spec, indent=2))
    return path


def load_spec(model_dir: str | Path) -> dict[str, Any]:
    """preprocess.json of an export folder, or the same built from a checkpoint's config.json."""
    model_dir = Path(model_dir)
    path = model_dir / SPEC_FILE
    if path.exists():
        return json.loads(path.read_text())
    config_path = model_dir / "config.json"
    if config_path.exists():
        return spec_from_config(json.loads(config_path.read_text()))
    raise FileNotFoundError(
        f"{model_dir} holds neither {SPEC_FILE} (an export folder) nor config.json "
        "(a classifier checkpoint); pass the folder written by `dermae export` or training"
    )


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """Temperature scaling on probabilities: softmax(log p / T) == softmax(logits / T), because
    log p differs from the logits by a per-row constant. None or 1 leaves `probs` as they are.
    `dermae calibrate --temperature` writes T into preprocess.json ("temperature")."""
    if temperature is None or float(temperature) == 1.0:
        return probs
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.asarray(probs).dtype)
