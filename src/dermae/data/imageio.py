"""Open untrusted image files safely; the one decoder of ingest (the cache), predict and serve.

1. `inspect_image` reads only the header, with only the accepted formats' parsers, and refuses
   anything that is not an image, is another format, or claims more than `max_pixels`
   pixels (a decompression bomb costs nothing here: nothing is decoded yet).
2. `decode_rgb` then decodes at the smallest cheap scale that keeps both sides >= `min_side`:
   JPEG in the DCT domain (`draft`, 1/2 to 1/8, before any pixel is decoded), other formats
   with `Image.reduce` right after decoding (a box average), so conversions, EXIF turns and
   the final resize work on the small image. Memory peaks at the format's own decode buffer.

There is one pixel limit, `DEFAULT_MAX_PIXELS`, for every caller. Pillow's own
decompression-bomb warning (89 MP) is not silenced: with this limit it cannot fire for an
image that is decoded, and where a caller raises the limit above it, the warning is wanted.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from dermae.data.errors import DataError

DEFAULT_MAX_PIXELS = 50_000_000  # above any phone camera (48 MP), far below a bomb
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # the only parsers that see the bytes
ALLOWED_FORMATS = frozenset({*OPEN_FORMATS, "MPO"})  # MPO comes out of the JPEG parser
ACCEPTED_TEXT = "use JPEG, PNG, WebP, BMP or TIFF"
# Magic bytes of formats people try that are not accepted (for a clearer error).
OTHER_FORMATS = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"%PDF": "PDF", b"\x00\x00\x01\x00": "ICO"}
EXIF_ORIENTATION = 0x0112
T = Image.Transpose
# EXIF orientation -> the turn that makes the image upright (as ImageOps.exif_transpose).
EXIF_TRANSPOSE = {
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_270,
    7: T.TRANSVERSE,
    8: T.ROTATE_90,
}
# Modes where a box average before the RGB conversion gives the same pixels as after it
# (up to rounding); palette, alpha and 16-bit images are converted first.
REDUCE_FIRST_MODES = ("RGB", "L")

Source = str | Path | bytes | BinaryIO


class ImageError(DataError):
    """An input that is not a usable image; `code` is machine-readable: not_found,
    not_an_image, unsupported_format, truncated, too_many_pixels, too_small, unreadable."""

    def __init__(self, code: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.code = code
        self.detail = detail or message.split(": ", 1)[-1]  # the reason without the file name


def _sniff_other_format(head: bytes) -> str | None:
    for magic, name in OTHER_FORMATS.items():
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":  # ISO media: HEIC / HEIF (iPhone) or AVIF
        return "AVIF" if head[8:12].startswith(b"avi") else "HEIC/HEIF"
    return None


def _label(source: Source, name: str | None) -> str:
    if name:
        return name
    return str(source) if isinstance(source, str | Path) else "upload"


def _head(source: Source, stream: BinaryIO) -> bytes:
    if isinstance(source, str | Path):
        with Path(source).open("rb") as f:
            return f.read(32)
    stream.seek(0)
    return stream.read(32)


def _open(source: Source, max_pixels: int, label: str) -> Image.Image:
    """Header only: a lazily decoding PIL image, checked for format and pixel count."""
    if isinstance(source, str | Path) and not Path(source).is_file():
        raise ImageError("not_found", f"{label}: file not found", "file not found")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        image = Image.open(stream, formats=OPEN_FORMATS)
    except Image.DecompressionBombError:  # Pillow's hard stop (over 179 MP) comes first
        raise ImageError(
            "too_many_pixels", f"{label}: image has too many pixels (over {max_pixels:,})"
        ) from None
    except UnidentifiedImageError:
        other = _sniff_other_format(_head(source, stream))
        if other:
            raise ImageError(
                "unsupported_format", f"{label}: {other} images are not accepted; {ACCEPTED_TEXT}"
            ) from None
        raise ImageError(
            "not_an_image", f"{label}: not a readable image; {ACCEPTED_TEXT}"
        ) from None
    except PermissionError as err:
        raise ImageError("unreadable", f"{label}: cannot read file ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(
            "truncated", f"{label}: image header is truncated or corrupt ({err})", str(err)
        ) from None
    fmt, (width, height) = image.format, image.size
    if fmt not in ALLOWED_FORMATS:
        image.close()
        raise ImageError(
            "unsupported_format", f"{label}: {fmt} images are not accepted; {ACCEPTED_TEXT}"
        )
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            "too_many_pixels",
            f"{label}: {width}x{height} = {width * height:,} pixels is over the limit "
            f"of {max_pixels:,}; downscale the image first",
        )
    return image


def inspect_image(
    source: Source, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the header alone, or `ImageError` with its code."""
    with _open(source, max_pixels, _label(source, name)) as image:
        return image.format, image.size


def _to_rgb(image: Image.Image, source_mode: str) -> Image.Image:
    if source_mode == "RGB":
        return image
    if image.mode.startswith(("I", "F")):
        # 16-bit (or wider) grayscale: PIL's own convert() clips at 255, so rescale instead.
        wide = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.floor(wide / 257.0 + 0.5), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent areas become black, like the dark vignette of dermoscopy images.
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def _reduce(image: Image.Image, min_side: int) -> Image.Image:
    """Box-average by the largest integer factor that keeps both sides >= min_side (>= 2 only)."""
    factor = min(image.size) // min_side if min_side else 0
    return image.reduce(factor) if factor >= 2 else image


def decode_rgb(
    source: Source,
    min_side: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> tuple[Image.Image, str | None, tuple[int, int]]:
    """(RGB image, source mode when it was not RGB, full-resolution size after EXIF turn).

    `min_side` > 0 decodes large images at a reduced scale keeping both sides >= it (JPEG
    draft, else `reduce`); raises `ImageError` (a `DataError`) naming the file."""
    label = _label(source, name)
    image = _open(source, max_pixels, label)
    try:
        with image:
            tile_mode = str(image.tile[0].args) if image.tile else ""
            mode = image.mode
            if mode == "RGB" and ";16" in tile_mode:
                mode = "RGB;16"  # PIL keeps the high byte of 48-bit PNGs: count it
            full_size = image.size
            if min_side and image.format in ("JPEG", "MPO"):
                image.draft(None, (min_side, min_side))
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            # The decode buffer goes as soon as a smaller image exists; the new images
            # below do not depend on the file, so they outlive the `with`.
            if image.mode in REDUCE_FIRST_MODES and "transparency" not in image.info:
                small = _reduce(image, min_side)
                rgb = _to_rgb(small, mode if small is image else small.mode)
            else:
                rgb = _reduce(_to_rgb(image, mode), min_side)
            if rgb is image:
                rgb = image.copy()  # closing the file below would invalidate it
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(
            "truncated", f"{label}: image data is truncated or corrupt ({err})", str(err)
        ) from None
    if orientation in (5, 6, 7, 8):
        full_size = (full_size[1], full_size[0])  # a quarter turn swaps the sides
    if orientation in EXIF_TRANSPOSE:
        rgb = rgb.transpose(EXIF_TRANSPOSE[orientation])
    return rgb, (None if mode == "RGB" else mode), full_size


__all__ = [
    "ACCEPTED_TEXT",
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "OPEN_FORMATS",
    "ImageError",
    "decode_rgb",
    "inspect_image",
]
