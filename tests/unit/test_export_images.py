"""Image decoding guards and the resize rule shared with the training cache."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dermae.deploy.images import ImageError, as_model_input, open_image, preprocess_image


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG that claims width x height pixels but holds a few bytes (a 'bomb')."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_preprocess_centre_crops_after_shorter_side_resize():
    # 8x4 image, size 4: scale 1, so the result is exactly columns 2..5.
    pixels = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3)
    out = preprocess_image(Image.fromarray(pixels), 4, interpolation="nearest")
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, pixels[:, 2:6].transpose(2, 0, 1) / 255.0, atol=1e-7)


def test_preprocess_matches_pil_resize_then_crop_for_ham_shape():
    # HAM10000 images are 200x150: shorter side 150 -> 64 gives 85x64, crop 10 px each side.
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8))
    expected = np.asarray(
        image.resize((85, 64), Image.Resampling.BICUBIC).crop((10, 0, 74, 64)), dtype=np.float32
    )
    out = preprocess_image(image, 64)
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1) / 255.0, atol=0)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_preprocess_portrait_and_grey_images():
    grey = Image.fromarray(np.full((90, 30), 128, dtype=np.uint8), mode="L")
    out = preprocess_image(grey, 16)
    assert out.shape == (3, 16, 16)
    np.testing.assert_allclose(out, 128 / 255.0, atol=1e-6)


def test_open_image_decodes_and_converts_to_rgb():
    buf = io.BytesIO()
    Image.new("RGBA", (5, 7), (10, 20, 30, 40)).save(buf, "PNG")
    image = open_image(buf.getvalue())
    assert image.mode == "RGB" and image.size == (5, 7)
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_open_image_applies_exif_orientation():
    image = Image.new("RGB", (20, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    assert open_image(buf.getvalue()).size == (10, 20)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"this is not an image", "not_an_image"),
        (jpeg_bytes()[:300], "truncated"),
        (png_header_only(30_000, 30_000), "too_many_pixels"),  # 900 MP claimed, 60 bytes sent
    ],
)
def test_open_image_rejects_bad_bytes_with_codes(payload, code):
    with pytest.raises(ImageError) as info:
        open_image(payload, name="x.jpg")
    assert info.value.code == code
    assert "x.jpg" in str(info.value)


def test_open_image_pixel_limit_is_configurable_and_missing_file(tmp_path):
    with pytest.raises(ImageError, match="over the limit") as info:
        open_image(jpeg_bytes(40, 30), max_pixels=1000)
    assert info.value.code == "too_many_pixels"
    assert open_image(jpeg_bytes(40, 30), max_pixels=1200).size == (40, 30)
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "nope.jpg")
    assert info.value.code == "not_found"


def test_open_image_refuses_gif():
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF")
    with pytest.raises(ImageError) as info:
        open_image(buf.getvalue())
    assert info.value.code == "unsupported_format"


def test_as_model_input_accepts_uint8_cache_layout():
    cache = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    cache[1, :, :, 2] = 255
    x = as_model_input(cache)
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    assert x[1, 2].min() == 1.0 and x[1, :2].max() == 0.0 and x[0].max() == 0.0


def test_open_image_names_heic_as_unsupported():
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40
    with pytest.raises(ImageError, match="HEIC") as info:
        open_image(heic)
    assert info.value.code == "unsupported_format"
