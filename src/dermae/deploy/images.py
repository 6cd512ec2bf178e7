"""Decode untrusted image files safely and turn them into model input.

`preprocess_image` must give the same pixels as the training image cache: shorter side
resized to S (bicubic), then a centre crop to S x S, RGB, float in [0, 1]. When
`dermae.data.cache` lands on main, this is the function to keep in step with it (the
interpolation is recorded in every export's preprocess.json so a mismatch is visible).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_METHOD = "shorter_side_then_center_crop"
DEFAULT_INTERPOLATION = "bicubic"
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}
# Formats a clinic camera, phone or dermatoscope export produces (MPO = multi-picture JPEG).
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # parsers Image.open may use
ALLOWED_FORMATS = frozenset({*OPEN_FORMATS, "MPO"})  # MPO comes out of the JPEG parser
DEFAULT_MAX_PIXELS = 50_000_000  # above any phone camera (48 MP), far below a bomb
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


class ImageError(ValueError):
    """An input that is not a usable image; `code` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# Magic bytes of image formats people try that are not accepted (for a clearer error).
OTHER_FORMATS = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"%PDF": "PDF", b"\x00\x00\x01\x00": "ICO"}


def _sniff_other_format(head: bytes) -> str | None:
    for magic, name in OTHER_FORMATS.items():
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":  # ISO media: HEIC / HEIF (iPhone) or AVIF
        brand = head[8:12]
        return "AVIF" if brand.startswith(b"avi") else "HEIC/HEIF"
    return None


def _stream(source: str | Path | bytes) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")  # noqa: SIM115


def open_image(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Decode a file or bytes to a fully loaded RGB image, or raise `ImageError`.

    The pixel count is checked from the header, before any pixel is decoded, so a
    decompression bomb costs nothing. EXIF orientation is applied (phone photos).
    """
    label = name or (str(source) if not isinstance(source, bytes) else "upload")
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageError("not_found", f"{label}: file not found")
    try:
        with _stream(source) as stream, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                # Only the accepted formats' parsers ever see the bytes; reads the header only.
                image = Image.open(stream, formats=OPEN_FORMATS)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ImageError(
                    "too_many_pixels", f"{label}: image has too many pixels (over {max_pixels:,})"
                ) from None
            except UnidentifiedImageError:
                stream.seek(0)
                known = _sniff_other_format(stream.read(32))
                if known:
                    raise ImageError(
                        "unsupported_format",
                        f"{label}: {known} images are not accepted; "
                        "use JPEG, PNG, WebP, BMP or TIFF",
                    ) from None
                raise ImageError(
                    "not_an_image",
                    f"{label}: not a readable image; use JPEG, PNG, WebP, BMP or TIFF",
                ) from None
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                raise ImageError(
                    "truncated", f"{label}: image header is truncated or corrupt ({err})"
                ) from None
            if image.format not in ALLOWED_FORMATS:
                raise ImageError(
                    "unsupported_format",
                    f"{label}: {image.format} images are not accepted; "
                    "use JPEG, PNG, WebP, BMP or TIFF",
                )
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    "too_many_pixels",
                    f"{label}: {width}x{height} = {width * height:,} pixels is over the limit "
                    f"of {max_pixels:,}; downscale the image first",
                )
            try:
                image.load()
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                raise ImageError(
                    "truncated", f"{label}: image data is truncated or corrupt ({err})"
                ) from None
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except OSError as err:  # the file itself cannot be read (permissions, I/O)
        raise ImageError("unreadable", f"{label}: cannot read file ({err})") from None


def preprocess_image(
    image: Image.Image, size: int, interpolation: str = DEFAULT_INTERPOLATION
) -> np.ndarray:
    """RGB PIL image -> float32 [3, size, size] in [0, 1] (shorter side to size, centre crop)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"unknown interpolation '{interpolation}'; use one of {list(INTERPOLATIONS)}"
        )
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    # max(size, ...) keeps the shorter side exactly `size` despite rounding.
    new_w = max(size, round(width * scale))
    new_h = max(size, round(height * scale))
    resized = image.resize((new_w, new_h), INTERPOLATIONS[interpolation])
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    pixels = np.asarray(cropped, dtype=np.uint8)  # [S, S, 3]
    return pixels.transpose(2, 0, 1).astype(np.float32) / 255.0


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
    "open_image",
    "preprocess_image",
    "uint8_to_input",
]
