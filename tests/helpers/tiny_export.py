"""A tiny exported classifier (random weights, ONNX fp32) for predict and serve tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.data.classes import HAM10000_CLASSES
from dermae.deploy.export import export_onnx

MALIGNANT = ["akiec", "bcc", "mel"]


def tiny_export(root: Path, size: int = 32) -> Path:
    """`root/export`: the test architecture at `size` px, threshold 0.4, one torch thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        config = classifier_config("test_efficientnet", list(HAM10000_CLASSES), MALIGNANT, size)
        ckpt = save_classifier(
            root / "ckpt", build_classifier(config), {"threshold": {"malignant_risk": 0.4}}
        )
        return export_onnx(ckpt, root / "export", int8=False, threads=1)
    finally:
        torch.set_num_threads(before)


def image_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A smooth colour gradient with noise, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    base = np.stack([x * 255 / max(width, 1), y * 255 / max(height, 1), np.full_like(x, 128)], -1)
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()
