"""Image checks on untrusted input, and pixels identical to the training cache."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dermae.data.cache import load_square
from dermae.deploy.images import (
    ImageError,
    as_model_input,
    inspect_image,
    load_image,
    preprocess_image,
)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG that claims width x height pixels but holds a few bytes (a 'bomb')."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = chunk(b"IDAT", zlib.compress(b"\0"))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("width", "height", "fmt"), [(200, 150, "JPEG"), (1600, 1200, "JPEG"), (90, 130, "PNG")]
)
def test_load_image_equals_the_training_cache(tmp_path, width, height, fmt):
    # 1600x1200 at 64 px takes the cache's JPEG-draft path: still identical.
    path = tmp_path / f"x.{fmt.lower()}"
    noise(width, height).save(path, fmt)
    cached, _ = load_square(path, 64)
    for source in (path, path.read_bytes()):
        out = load_image(source, 64)
        assert out.shape == (3, 64, 64) and out.dtype == np.float32
        np.testing.assert_array_equal(out, cached.transpose(2, 0, 1).astype(np.float32) / 255)


def test_preprocess_image_is_centre_square_then_bicubic_resize():
    image = noise(200, 150, seed=1)
    expected = np.asarray(image.crop((25, 0, 175, 150)).resize((64, 64), Image.Resampling.BICUBIC))
    out = preprocess_image(image, 64)
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1).astype(np.float32) / 255)
    # Scale 1: exactly the centre columns 2..5 of an 8x4 image.
    pixels = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3)
    np.testing.assert_allclose(
        preprocess_image(Image.fromarray(pixels), 4),
        pixels[:, 2:6].transpose(2, 0, 1) / 255,
        atol=1e-7,
    )


def test_load_image_applies_exif_orientation_and_transparency():
    half = np.zeros((10, 20, 3), dtype=np.uint8)
    half[:, :10] = (255, 0, 0)  # left half red, right half blue
    half[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: red on top
    out = load_image(encode(Image.fromarray(half), "PNG", exif=exif), 8)
    assert out[0, :3].mean() > 0.9 and out[2, :3].mean() < 0.1  # top rows red
    assert out[2, -3:].mean() > 0.9  # bottom rows blue
    clear = Image.new("RGBA", (6, 6), (255, 255, 255, 0))
    np.testing.assert_array_equal(load_image(encode(clear, "PNG"), 4), 0.0)  # on black


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"this is not an image", "not_an_image"),
        (encode(noise(40, 30))[:300], "truncated"),
        (png_header_only(30_000, 30_000), "too_many_pixels"),  # 900 MP claimed, 60 bytes sent
        (encode(Image.new("P", (4, 4)), "GIF"), "unsupported_format"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, "unsupported_format"),
    ],
)
def test_bad_bytes_are_refused_with_a_code_and_the_name(payload, code):
    with pytest.raises(ImageError) as info:
        load_image(payload, 16, name="x.jpg")
    assert info.value.code == code
    assert str(info.value).startswith("x.jpg: ")


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    data = encode(noise(40, 30))
    with pytest.raises(ImageError, match="1,200 pixels is over the limit of 1,000") as info:
        inspect_image(data, max_pixels=1000)
    assert info.value.code == "too_many_pixels"
    assert inspect_image(data, max_pixels=1200) == ("JPEG", (40, 30))
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "nope.jpg", 16)
    assert info.value.code == "not_found"


def test_truncated_body_with_valid_header_is_refused():
    data = encode(noise(64, 64))
    with pytest.raises(ImageError, match="truncated or corrupt") as info:
        load_image(data[: len(data) // 2], 16, name="half.jpg")
    assert info.value.code == "truncated"
    assert "half.jpg" in str(info.value) and "BytesIO" not in str(info.value)


def test_as_model_input_accepts_uint8_cache_layout():
    cache = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    cache[1, :, :, 2] = 255
    x = as_model_input(cache)
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    assert x[1, 2].min() == 1.0 and x[1, :2].max() == 0.0 and x[0].max() == 0.0
