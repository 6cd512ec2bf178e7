"""A real uvicorn on 127.0.0.1 answers >= 50 concurrent requests without an error."""

import asyncio
import io
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.data.classes import HAM10000_CLASSES
from dermae.deploy.export import export_onnx
from dermae.deploy.server import background_server, create_app

CONCURRENT = 60


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("load")
    torch.manual_seed(0)
    config = classifier_config(
        "test_efficientnet", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], 32
    )
    ckpt = save_classifier(root / "ckpt", build_classifier(config))
    out = export_onnx(ckpt, root / "export", int8=False, threads=1)
    torch.set_num_threads(before)
    return out


def jpeg(seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


async def fire(base_url, images):
    limits = httpx.Limits(max_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def one(i):
            files = {"file": (f"{i}.jpg", images[i % len(images)], "image/jpeg")}
            return await client.post("/predict", files=files)

        return await asyncio.gather(*(one(i) for i in range(CONCURRENT)))


def test_concurrent_requests_all_succeed_with_consistent_answers(export_dir):
    images = [jpeg(s) for s in range(4)]
    app = create_app(export_dir, timeout_s=20, threads=1)
    with background_server(app) as base_url:
        assert httpx.get(f"{base_url}/health", timeout=10).json()["status"] == "ok"
        started = time.perf_counter()
        responses = asyncio.run(asyncio.wait_for(fire(base_url, images), timeout=60))
        elapsed = time.perf_counter() - started
    assert [r.status_code for r in responses] == [200] * CONCURRENT
    bodies = [r.json() for r in responses]
    # The same image gives the same answer however the requests interleave.
    for i, body in enumerate(bodies):
        assert body["file"] == f"{i}.jpg"
        reference = bodies[i % len(images)]["probabilities"]
        assert body["probabilities"] == pytest.approx(reference, abs=1e-6)
    assert elapsed < 60
