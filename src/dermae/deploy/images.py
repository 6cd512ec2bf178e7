"""Turn untrusted image files into model input exactly like the training cache.

The checks and the decoder live in the data layer (`dermae.data.imageio`), shared with
ingest: header-only checks first (accepted formats, one pixel limit, a minimum side), then
the training cache's own `dermae.data.cache.load_square` (EXIF orientation, transparency
on black, centre square, bicubic resize, JPEG draft / `reduce` for large originals), so a
deployed model sees exactly the pixels it was trained on.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dermae.data.cache import RESAMPLE, center_box, load_square
from dermae.data.errors import DataError
from dermae.data.imageio import (
    ACCEPTED_TEXT,
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    ImageError,
    inspect_image,
)

RESIZE_METHOD = "center_square_then_resize"
INTERPOLATION = "bicubic"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# Below this many pixels on the shorter side an image carries no lesion detail to classify
# (a 1x1 upload would be upscaled to a flat colour and still get a confident answer).
MIN_IMAGE_SIDE = 16


def check_min_side(size: tuple[int, int], min_side: int, label: str) -> None:
    """Refuse an image whose shorter side is below `min_side` (code "too_small")."""
    if min(size) < min_side:
        raise ImageError(
            "too_small",
            f"{label}: {size[0]}x{size[1]} pixels is too small to classify; send an image "
            f"at least {min_side}x{min_side} pixels (a photo of the lesion, not a thumbnail)",
        )


def load_image(
    source: str | Path | bytes,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    min_side: int = 1,
) -> np.ndarray:
    """A checked image file or bytes -> float32 [3, size, size] in [0, 1], as the cache makes it."""
    label = name or ("upload" if isinstance(source, bytes) else str(source))
    _, image_size = inspect_image(source, max_pixels, label)
    check_min_side(image_size, min_side, label)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        pixels, _ = load_square(stream, size)
    except DataError as err:
        detail = getattr(err.__cause__, "detail", None) or str(err).split(": ", 1)[-1]
        raise ImageError(
            "truncated", f"{label}: image data is truncated or corrupt ({detail})"
        ) from None
    return pixels.transpose(2, 0, 1).astype(np.float32) / 255.0


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """An already decoded PIL image -> float32 [3, size, size] in [0, 1].

    Same geometry as the cache (centre square, bicubic resize to size); use `load_image`
    for files, which also matches the cache's decoding (EXIF, transparency, JPEG draft).
    """
    square = image.convert("RGB").crop(center_box(*image.size)).resize((size, size), RESAMPLE)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / 255.0


def uint8_to_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] (the prepared cache) -> float32 [N, 3, S, S] in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, S, S, 3], got shape {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def as_model_input(images) -> np.ndarray:
    """Accept float [N, 3, S, S] in [0, 1] (numpy or torch) or uint8 [N, S, S, 3]."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return uint8_to_input(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected float images [N, 3, S, S] in [0, 1], got shape {images.shape}")
    return np.ascontiguousarray(images, dtype=np.float32)


__all__ = [
    "ACCEPTED_TEXT",
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MIN_IMAGE_SIDE",
    "RESIZE_METHOD",
    "ImageError",
    "as_model_input",
    "check_min_side",
    "inspect_image",
    "load_image",
    "preprocess_image",
    "uint8_to_input",
]
