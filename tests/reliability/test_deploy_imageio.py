"""One decoder and one pixel limit for ingest (the cache), predict and serve; large images
decode at reduced size; Pillow's decompression-bomb warning is no longer silenced."""

from __future__ import annotations

import inspect
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermae.data import imageio
from dermae.data.cache import build_image_cache, center_box, load_square
from dermae.data.imageio import DEFAULT_MAX_PIXELS, ImageError, decode_rgb
from dermae.deploy import images as deploy_images
from dermae.deploy.predictor import Predictor
from dermae.deploy.server import create_app


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


def smooth(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def test_one_pixel_limit_for_ingest_predict_and_serve():
    assert DEFAULT_MAX_PIXELS == 50_000_000
    assert deploy_images.DEFAULT_MAX_PIXELS is DEFAULT_MAX_PIXELS
    for function in (decode_rgb, imageio.inspect_image, Predictor.__init__, create_app):
        assert inspect.signature(function).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS


def test_ingest_refuses_the_144_megapixel_png_and_pillow_still_warns(tmp_path: Path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(12_000, 12_000))  # 144 MP claimed in 60 bytes
    fine = tmp_path / "fine.png"
    smooth(40, 30).save(fine)
    with pytest.warns(Image.DecompressionBombWarning):  # no longer silenced
        report = build_image_cache([fine, bomb], 16, tmp_path / "c.npy", progress=False)
    assert list(report.failures) == [1]
    assert report.failures[1] == (
        f"{bomb}: cannot decode image (12000x12000 = 144,000,000 pixels is over the limit of "
        "50,000,000; downscale the image first); replace the file or remove its row"
    )


def test_ingest_uses_the_shared_formats():
    with pytest.raises(ImageError) as info:
        decode_rgb(io.BytesIO(b"GIF89a" + b"\0" * 40), name="a.gif")
    assert info.value.code == "unsupported_format"
    assert str(info.value) == "a.gif: GIF images are not accepted; use JPEG, PNG, WebP, BMP or TIFF"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_large_images_decode_reduced_and_match_the_full_recipe(tmp_path: Path, fmt: str):
    path = tmp_path / f"big.{fmt.lower()}"
    original = smooth(1200, 900)
    original.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    image, conversion, full_size = decode_rgb(path, min_side=128)
    assert conversion is None and full_size == (1200, 900)
    assert image.size == (172, 129)  # reduced by 900 // 128 = 7, sides rounded up
    full = np.asarray(original.crop(center_box(1200, 900)).resize((64, 64), Image.BICUBIC))
    pixels, _ = load_square(path, 64)
    assert np.abs(pixels.astype(int) - full.astype(int)).mean() < 1.5


def test_small_images_are_decoded_in_full(tmp_path: Path):
    path = tmp_path / "small.png"
    smooth(200, 150).save(path)
    image, _, _ = decode_rgb(path, min_side=128)
    assert image.size == (200, 150)  # 150 // 128 = 1: nothing to reduce


def test_reduce_keeps_exif_orientation_and_transparency(tmp_path: Path):
    exif = Image.Exif()
    exif[imageio.EXIF_ORIENTATION] = 6  # stored sideways: a quarter turn makes it upright
    rgba = np.zeros((400, 1000, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 500:, 3] = 255  # right half opaque, left half transparent -> black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "turned.png", exif=exif)
    image, conversion, full_size = decode_rgb(tmp_path / "turned.png", min_side=64)
    assert conversion == "RGBA" and full_size == (400, 1000)
    assert image.size == (67, 167)  # reduced by 6, then turned upright
    pixels = np.asarray(image)
    assert pixels[:80].max() == 0 and pixels[-80:].min() == 200  # the halves, turned
