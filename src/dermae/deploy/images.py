"""Check untrusted image files safely, then turn them into model input like the training cache.

Two steps per file:
1. `inspect_image` reads only the header, with only the accepted formats' parsers, and
   refuses anything that is not an image, is another format, or claims more than
   `max_pixels` pixels (a decompression bomb costs nothing here).
2. `load_image` then decodes with the training cache's own function
   (`dermae.data.cache.load_square`: EXIF orientation, transparency on black, centre
   square, bicubic resize, JPEG draft for large originals), so a deployed model sees
   exactly the pixels it was trained on.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from dermae.data.cache import RESAMPLE, center_box, load_square
from dermae.data.errors import DataError

RESIZE_METHOD = "center_square_then_resize"
INTERPOLATION = "bicubic"
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # the only parsers that see the bytes
ALLOWED_FORMATS = frozenset({*OPEN_FORMATS, "MPO"})  # MPO comes out of the JPEG parser
DEFAULT_MAX_PIXELS = 50_000_000  # above any phone camera (48 MP), far below a bomb
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
ACCEPTED_TEXT = "use JPEG, PNG, WebP, BMP or TIFF"
# Magic bytes of formats people try that are not accepted (for a clearer error).
OTHER_FORMATS = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"%PDF": "PDF", b"\x00\x00\x01\x00": "ICO"}


class ImageError(ValueError):
    """An input that is not a usable image; `code` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _sniff_other_format(head: bytes) -> str | None:
    for magic, name in OTHER_FORMATS.items():
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":  # ISO media: HEIC / HEIF (iPhone) or AVIF
        return "AVIF" if head[8:12].startswith(b"avi") else "HEIC/HEIF"
    return None


def _stream(source: str | Path | bytes) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")  # noqa: SIM115


def _label(source: str | Path | bytes, name: str | None) -> str:
    return name or ("upload" if isinstance(source, bytes) else str(source))


def inspect_image(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the header alone, or `ImageError` with a code:
    not_found, not_an_image, unsupported_format, truncated, too_many_pixels, unreadable."""
    label = _label(source, name)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageError("not_found", f"{label}: file not found")
    try:
        with _stream(source) as stream, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with Image.open(stream, formats=OPEN_FORMATS) as image:
                    fmt, size = image.format, image.size
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ImageError(
                    "too_many_pixels", f"{label}: image has too many pixels (over {max_pixels:,})"
                ) from None
            except UnidentifiedImageError:
                stream.seek(0)
                other = _sniff_other_format(stream.read(32))
                if other:
                    raise ImageError(
                        "unsupported_format",
                        f"{label}: {other} images are not accepted; {ACCEPTED_TEXT}",
                    ) from None
                raise ImageError(
                    "not_an_image", f"{label}: not a readable image; {ACCEPTED_TEXT}"
                ) from None
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                raise ImageError(
                    "truncated", f"{label}: image header is truncated or corrupt ({err})"
                ) from None
    except OSError as err:  # the file itself cannot be read (permissions, I/O)
        raise ImageError("unreadable", f"{label}: cannot read file ({err})") from None
    if fmt not in ALLOWED_FORMATS:
        raise ImageError(
            "unsupported_format", f"{label}: {fmt} images are not accepted; {ACCEPTED_TEXT}"
        )
    if size[0] * size[1] > max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"{label}: {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels is over the limit "
            f"of {max_pixels:,}; downscale the image first",
        )
    return fmt, size


def load_image(
    source: str | Path | bytes,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """A checked image file or bytes -> float32 [3, size, size] in [0, 1], as the cache makes it."""
    inspect_image(source, max_pixels, name)
    try:
        pixels, _ = load_square(io.BytesIO(source) if isinstance(source, bytes) else source, size)
    except DataError as err:
        detail = str(err).split(": ", 1)[-1]  # drop the cache's path prefix
        raise ImageError(
            "truncated", f"{_label(source, name)}: image data is truncated or corrupt ({detail})"
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
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "RESIZE_METHOD",
    "ImageError",
    "as_model_input",
    "inspect_image",
    "load_image",
    "preprocess_image",
    "uint8_to_input",
]
