"""Image cache: exact round trip, conversions to RGB counted, bad files reported, reuse."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermae.data.cache import build_image_cache, center_box, load_rgb, load_square
from dermae.data.errors import DataError


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_center_box() -> None:
    assert center_box(200, 150) == (25, 0, 175, 150)
    assert center_box(30, 40) == (0, 5, 30, 35)
    assert center_box(7, 7) == (0, 0, 7, 7)
    assert center_box(8, 5) == (1, 0, 6, 5)


def test_cache_round_trip_equals_pil_crop_and_resize(tmp_path: Path) -> None:
    sources = [_pattern(30, 40, 0), _pattern(40, 30, 1), _pattern(24, 24, 2)]
    paths = []
    for i, pixels in enumerate(sources):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    report = build_image_cache(paths, 16, tmp_path / "images.npy", progress=False)
    cached = np.load(tmp_path / "images.npy")
    assert cached.shape == (3, 16, 16, 3) and cached.dtype == np.uint8
    assert report.failures == {} and report.converted == {} and not report.reused
    crops = [(5, 0, 35, 30), (0, 5, 30, 35), (0, 0, 24, 24)]  # the centered squares
    for i, (pixels, crop) in enumerate(zip(sources, crops, strict=True)):
        expected = Image.fromarray(pixels).crop(crop).resize((16, 16), Image.Resampling.BICUBIC)
        np.testing.assert_array_equal(cached[i], np.asarray(expected))


def test_small_jpeg_is_decoded_in_full_and_large_jpeg_drafted_closely(tmp_path: Path) -> None:
    small = Image.fromarray(_pattern(30, 40))
    small.save(tmp_path / "small.jpg", quality=95)
    decoded = Image.open(tmp_path / "small.jpg").convert("RGB")
    expected = decoded.crop((5, 0, 35, 30)).resize((16, 16), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(load_square(tmp_path / "small.jpg", 16)[0], np.asarray(expected))
    # A 600x450 original decodes at a DCT scale that keeps >= 2x the target: half scale for
    # 64 px (300x225), quarter scale for 32 px (150x113). The result is nearly the same.
    smooth = np.asarray(
        Image.fromarray(_pattern(9, 12)).resize((600, 450), Image.Resampling.BICUBIC)
    )
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    assert load_rgb(tmp_path / "big.jpg", min_side=128)[0].size == (300, 225)
    assert load_rgb(tmp_path / "big.jpg", min_side=64)[0].size == (150, 113)
    full = Image.open(tmp_path / "big.jpg").convert("RGB")
    full = np.asarray(full.crop((75, 0, 525, 450)).resize((32, 32), Image.Resampling.BICUBIC))
    drafted = load_square(tmp_path / "big.jpg", 32)[0]
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 2.0


def test_conversions_to_rgb_are_correct_and_counted(tmp_path: Path) -> None:
    gray = _pattern(20, 20)[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = np.dstack([_pattern(20, 20), np.full((20, 20), 255, np.uint8)])
    rgba[:10, :, 3] = 0  # top half transparent -> black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    g16 = (gray.astype(np.uint16) * 257 + 100).astype(np.uint16)  # high byte = gray
    Image.fromarray(g16).save(tmp_path / "gray16.png")
    write_png16(tmp_path / "rgb16.png", _pattern(20, 20).astype(np.uint16) * 257)
    Image.fromarray(_pattern(20, 20)).save(tmp_path / "rgb.png")

    image, conversion = load_rgb(tmp_path / "gray.png")
    assert conversion == "L"
    np.testing.assert_array_equal(np.asarray(image), np.dstack([gray] * 3))
    image, conversion = load_rgb(tmp_path / "rgba.png")
    assert conversion == "RGBA"
    assert np.asarray(image)[:10].max() == 0
    np.testing.assert_array_equal(np.asarray(image)[10:], rgba[10:, :, :3])
    image, conversion = load_rgb(tmp_path / "gray16.png")
    assert conversion.startswith("I")  # PIL calls 16-bit gray "I;16"
    np.testing.assert_array_equal(np.asarray(image), np.dstack([gray] * 3))  # rescaled, not clipped
    image, conversion = load_rgb(tmp_path / "rgb16.png")
    assert conversion == "RGB;16"
    np.testing.assert_array_equal(np.asarray(image), _pattern(20, 20))

    names = ["gray.png", "rgba.png", "gray16.png", "rgb16.png", "rgb.png", "gray.png"]
    report = build_image_cache([tmp_path / n for n in names], 8, tmp_path / "c.npy", progress=False)
    assert report.converted == {"I;16": 1, "L": 2, "RGB;16": 1, "RGBA": 1}


def test_bad_images_leave_zero_rows_and_reasons(tmp_path: Path) -> None:
    Image.fromarray(_pattern(30, 40)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    paths = [tmp_path / n for n in ["ok.jpg", "truncated.jpg", "text.jpg", "gone.jpg"]]
    report = build_image_cache(paths, 8, tmp_path / "c.npy", progress=False)
    assert sorted(report.failures) == [1, 2, 3]
    assert "truncated.jpg: cannot decode image (image file is truncated" in report.failures[1]
    assert "text.jpg: cannot decode image" in report.failures[2]
    assert "gone.jpg: image file not found" in report.failures[3]
    cached = np.load(tmp_path / "c.npy")
    assert cached[0].max() > 0 and cached[1:].max() == 0
    with pytest.raises(DataError, match="truncated"):
        load_square(paths[1], 8)


def test_cache_is_reused_for_same_inputs_and_rebuilt_otherwise(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_pattern(12, 12, i)).save(paths[-1])
    out = tmp_path / "images.npy"
    first = build_image_cache(paths, 8, out, progress=False)
    again = build_image_cache(paths, 8, out, progress=False)
    assert again.reused and again.key == first.key
    assert not build_image_cache(paths, 10, out, progress=False).reused  # other size
    assert np.load(out).shape == (3, 10, 10, 3)
    assert not build_image_cache(paths[::-1], 10, out, progress=False).reused  # other order
    Image.fromarray(_pattern(12, 12, 9)).save(paths[0])  # same name, new content
    rebuilt = build_image_cache(paths[::-1], 10, out, progress=False)
    assert not rebuilt.reused
    expected = Image.fromarray(_pattern(12, 12, 9)).resize((10, 10), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.load(out)[2], np.asarray(expected))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = _pattern(30, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    upright = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_270)  # 30 wide, 40 tall
    expected = upright.crop((0, 5, 30, 35)).resize((16, 16), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(load_square(tmp_path / "turned.png", 16)[0], np.asarray(expected))


def test_process_pool_gives_the_same_cache(tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_pattern(20, 26, i)).convert("L" if i == 2 else "RGB").save(paths[-1])
    paths.insert(3, tmp_path / "missing.png")
    one = build_image_cache(paths, 8, tmp_path / "one.npy", progress=False)
    two = build_image_cache(paths, 8, tmp_path / "two.npy", progress=False, workers=2)
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    assert one.failures == two.failures and list(two.failures) == [3]
    assert one.converted == two.converted == {"L": 1}
