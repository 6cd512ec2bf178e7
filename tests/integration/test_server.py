"""FastAPI app: one good request and every error case, checked with TestClient."""

import io
import struct
import tempfile
import time
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.data.classes import HAM10000_CLASSES
from dermae.deploy.export import export_onnx
from dermae.deploy.predictor import Predictor
from dermae.deploy.server import create_app

SIZE = 32


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("server")
    torch.manual_seed(0)
    config = classifier_config(
        "test_efficientnet", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], SIZE
    )
    ckpt = save_classifier(
        root / "ckpt", build_classifier(config), {"threshold": {"malignant_risk": 0.4}}
    )
    out = export_onnx(ckpt, root / "export", int8=False, threads=1)
    torch.set_num_threads(before)
    return out


@pytest.fixture(scope="module")
def client(export_dir):
    app = create_app(
        export_dir, max_upload_bytes=200_000, max_pixels=4_000_000, timeout_s=5, threads=1
    )
    with TestClient(app) as c:
        yield c


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def lesion_like(seed: int = 0, size=(200, 150)) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: size[1], : size[0]]
    blob = np.exp(-(((x - size[0] / 2) / 40) ** 2 + ((y - size[1] / 2) / 30) ** 2))
    pixels = np.stack([220 - 120 * blob, 170 - 110 * blob, 150 - 100 * blob], -1)
    pixels += rng.normal(0, 8, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_header_only(width, height):
    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0"))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def assert_error(response, status, error):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    return body


def test_predict_good_image_matches_predictor(client, export_dir):
    data = encode(lesion_like())
    response = client.post("/predict", files={"file": ("lesion.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Predictor(export_dir, threads=1).predict_image(data, name="lesion.jpg")
    assert body["file"] == "lesion.jpg"
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["prediction"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["malignant_risk"] == pytest.approx(
        sum(body["probabilities"][c] for c in ("akiec", "bcc", "mel")), abs=1e-6
    )
    assert body["threshold"] == 0.4 and body["flagged"] == (body["malignant_risk"] >= 0.4)
    assert "not a diagnosis" in body["notice"].lower()
    assert body["class_names"] == list(HAM10000_CLASSES)


def test_png_and_octet_stream_are_accepted(client):
    png = encode(lesion_like(1), "PNG")
    assert client.post("/predict", files={"file": ("a.png", png, "image/png")}).status_code == 200
    octet = client.post("/predict", files={"file": ("a", png, "application/octet-stream")})
    assert octet.status_code == 200


def test_upload_too_large_is_413(client):
    big = encode(lesion_like(2, size=(1200, 900)), "PNG")  # noise makes PNG large
    assert len(big) > 200_000
    response = client.post("/predict", files={"file": ("big.png", big, "image/png")})
    body = assert_error(response, 413, "upload_too_large")
    assert "200,000" in body["detail"]


def test_declared_content_length_over_limit_is_413_before_reading(client):
    response = client.post(
        "/predict",
        content=b"x" * 10,
        headers={
            "content-type": "multipart/form-data; boundary=abc",
            "content-length": "999999999",
        },
    )
    assert_error(response, 413, "upload_too_large")


def test_wrong_part_type_is_415(client):
    response = client.post("/predict", files={"file": ("notes.txt", b"hello", "text/plain")})
    body = assert_error(response, 415, "unsupported_media_type")
    assert "text/plain" in body["detail"]


def test_non_multipart_request_is_415(client):
    response = client.post("/predict", json={"file": "abc"})
    assert_error(response, 415, "unsupported_media_type")


def test_gif_is_415(client):
    gif = encode(Image.new("P", (8, 8)), "GIF")
    response = client.post("/predict", files={"file": ("a.gif", gif, "image/gif")})
    assert_error(response, 415, "unsupported_format")


def test_undecodable_image_is_422(client):
    response = client.post("/predict", files={"file": ("x.jpg", b"\xff\xd8garbage", "image/jpeg")})
    assert_error(response, 422, "not_an_image")
    jpeg = encode(lesion_like(3))
    truncated = client.post("/predict", files={"file": ("t.jpg", jpeg[:500], "image/jpeg")})
    assert_error(truncated, 422, "truncated")


def test_decompression_bomb_is_413(client):
    bomb = png_header_only(30_000, 30_000)
    assert len(bomb) < 100
    response = client.post("/predict", files={"file": ("bomb.png", bomb, "image/png")})
    body = assert_error(response, 413, "too_many_pixels")
    assert "bomb.png" in body["detail"] and "too many pixels" in body["detail"]
    # Under PIL's own bomb limit, our header check names the size.
    big = png_header_only(3_000, 2_000)
    response = client.post("/predict", files={"file": ("big.png", big, "image/png")})
    assert "6,000,000 pixels is over the limit of 4,000,000" in response.json()["detail"]


def test_missing_file_field_is_422(client):
    response = client.post(
        "/predict", files={"image": ("a.jpg", encode(lesion_like()), "image/jpeg")}
    )
    assert_error(response, 422, "missing_file")
    empty = client.post("/predict", files={"file": ("a.jpg", b"", "image/jpeg")})
    assert_error(empty, 422, "empty_file")


def test_malformed_multipart_is_400(client):
    response = client.post(
        "/predict", content=b"no boundary here", headers={"content-type": "multipart/form-data"}
    )
    assert_error(response, 400, "bad_request")


def test_slow_inference_is_504(export_dir, monkeypatch):
    app = create_app(export_dir, timeout_s=0.2, threads=1)
    predictor = app.state.predictor
    original = predictor.predict_image

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict_image", slow)
    with TestClient(app) as c:
        started = time.perf_counter()
        response = c.post(
            "/predict", files={"file": ("a.jpg", encode(lesion_like()), "image/jpeg")}
        )
        assert time.perf_counter() - started < 0.9  # answered at the timeout, not after the work
    assert_error(response, 504, "timeout")


def test_uploads_are_never_written_to_disk(export_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an upload was spooled to a temporary file")

    import starlette.formparsers

    for module in (tempfile, starlette.formparsers):
        for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    # Over Starlette's 1 MB spool threshold: its form parser would move this to disk.
    data = encode(lesion_like(4, size=(1000, 700)), "PNG")
    assert len(data) > 1024 * 1024
    with TestClient(create_app(export_dir, max_upload_bytes=4_000_000, threads=1)) as c:
        response = c.post("/predict", files={"file": ("a.png", data, "image/png")})
    assert response.status_code == 200, response.text


def test_health_model_page_and_docs(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "onnx"
    assert health["limits"] == {
        "max_upload_bytes": 200_000,
        "max_pixels": 4_000_000,
        "timeout_s": 5,
    }
    card = client.get("/model").json()
    assert "10.1038/sdata.2018.161" in card["training_data"]["citation"]
    assert card["threshold"]["malignant_risk"] == 0.4
    page = client.get("/")
    assert page.status_code == 200 and "Research tool" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert client.get(asset).status_code == 200
        assert "http://" not in text and "https://" not in text  # no CDN
    assert "https://" not in page.text and "http://" not in page.text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert_error(client.get("/docs"), 404, "not_found")  # opt-in: its assets need a CDN
    assert_error(client.get("/nope"), 404, "not_found")
