"""The server under bad and heavy input: headers everywhere, opt-in docs, one file per
upload, tiny images refused, and a decode gate that answers 503 instead of growing."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from dermae.cli import build_parser
from dermae.deploy.server import PAGE_HEADERS, ApiError, DecodeGate, background_server, create_app
from tests.helpers.tiny_export import image_bytes, tiny_export


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def client(export_dir: Path):
    with TestClient(create_app(export_dir, timeout_s=5, threads=1)) as c:
        yield c


def upload(*names: str, field: str = "file") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (name, image_bytes(40, 30), "image/png")) for name in names]


def test_security_headers_are_on_every_response(client):
    responses = {
        "page": client.get("/"),
        "health": client.get("/health"),
        "model": client.get("/model"),
        "static": client.get("/static/app.js"),
        "openapi": client.get("/openapi.json"),
        "404": client.get("/nope"),
        "405": client.get("/predict"),
        "415": client.post("/predict", json={"file": "x"}),
        "200": client.post("/predict", files=upload("a.png")),
    }
    for what, response in responses.items():
        for name, value in PAGE_HEADERS.items():
            assert response.headers.get(name) == value, (what, name)
    assert responses["200"].status_code == 200


def test_docs_are_off_by_default_and_opt_in(client, export_dir):
    for path in ("/docs", "/redoc"):
        assert client.get(path).status_code == 404
    page = client.get("/").text
    assert 'href="/docs"' not in page and 'href="/openapi.json"' in page  # no dead link
    assert build_parser().parse_args(["serve", "--model", "m"]).docs is False
    assert build_parser().parse_args(["serve", "--model", "m", "--docs"]).docs is True
    with TestClient(create_app(export_dir, threads=1, docs=True)) as c:
        docs = c.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]
        assert c.get("/redoc").status_code == 200
        # Only the docs pages get the relaxed policy.
        assert (
            c.get("/health").headers["content-security-policy"]
            == PAGE_HEADERS["Content-Security-Policy"]
        )


@pytest.mark.parametrize("count", [2, 100])
def test_several_files_are_refused_naming_the_count(client, count):
    response = client.post("/predict", files=upload(*[f"{i}.png" for i in range(count)]))
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "too_many_files"
    assert body["detail"].startswith(f"the form carries {count} files; send one image")


def test_a_file_in_another_field_counts_too(client):
    files = upload("a.png") + upload("b.png", field="extra")
    response = client.post("/predict", files=files)
    assert response.status_code == 400 and "carries 2 files" in response.json()["detail"]
    # A plain text field next to the one image is fine.
    ok = client.post("/predict", files=upload("a.png"), data={"note": "left arm"})
    assert ok.status_code == 200


def test_a_1x1_upload_is_refused(client):
    files = {"file": ("dot.png", image_bytes(1, 1), "image/png")}
    response = client.post("/predict", files=files)
    assert response.status_code == 422
    assert response.json() == {
        "error": "too_small",
        "detail": "dot.png: 1x1 pixels is too small to classify; send an image at least "
        "16x16 pixels (a photo of the lesion, not a thumbnail)",
    }


def test_health_reports_the_gate(client):
    assert client.get("/health").json()["concurrency"] == {
        "decode_slots": 2,
        "decode_pixels": 50_000_000,
        "max_waiting": 128,
        "max_requests": 130,
        "max_inflight_bytes": 3 * 20 * 1024 * 1024,
    }


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_gate_waits_for_pixels_then_answers_503_when_full():
    async def scenario() -> list[str]:
        gate = DecodeGate(slots=2, max_pixels=100, max_waiting=1, max_requests=9, max_bytes=99)
        events: list[str] = []
        await gate.acquire(80, 1)  # one image always fits
        second = asyncio.create_task(gate.acquire(80, 5))  # 160 > 100 pixels: waits
        await asyncio.sleep(0.05)
        events.append(f"second waiting={not second.done()} active={gate.active}")
        with pytest.raises(ApiError) as full:
            await gate.acquire(1, 5)  # one already waits: the queue is full
        events.append(f"{full.value.status} {full.value.headers} {full.value.detail}")
        gate.release(80)
        await second
        events.append(f"second granted active={gate.active} pixels={gate.pixels}")
        with pytest.raises(ApiError) as late:
            await gate.acquire(80, 0.05)  # does not fit within its timeout
        events.append(f"{late.value.status} {late.value.detail}")
        gate.release(80)
        events.append(
            f"idle active={gate.active} pixels={gate.pixels} waiting={len(gate._waiters)}"
        )  # noqa: SLF001
        return events

    assert run(scenario()) == [
        "second waiting=True active=1",
        "503 {'Retry-After': '1'} server busy: 1 images decoding and 1 waiting, the most it queues; "
        "retry in 1 s",
        "second granted active=1 pixels=80",
        "503 server busy decoding other images; retry in 1 s",
        "idle active=0 pixels=0 waiting=0",
    ]


def test_a_waiter_that_goes_away_leaves_no_slot_behind():
    async def scenario() -> tuple[int, int, int]:
        gate = DecodeGate(slots=1, max_pixels=100, max_waiting=4, max_requests=9, max_bytes=99)
        await gate.acquire(10, 1)
        gone = asyncio.create_task(gate.acquire(10, 5))
        await asyncio.sleep(0.05)
        gone.cancel()  # a client disconnect cancels its request
        await asyncio.gather(gone, return_exceptions=True)
        gate.release(10)
        await gate.acquire(10, 0.1)  # free at once: the cancelled waiter took nothing
        gate.release(10)
        return gate.active, gate.pixels, len(gate._waiters)  # noqa: SLF001

    assert run(scenario()) == (0, 0, 0)


def test_gate_caps_requests_and_bytes_in_flight():
    gate = DecodeGate(slots=1, max_pixels=10, max_waiting=0, max_requests=2, max_bytes=100)
    gate.admit(1000)  # the first is always let in, however large
    with pytest.raises(ApiError, match="uploads in flight would pass 100 bytes"):
        gate.admit(1)
    gate.leave(1000)
    gate.admit(60)
    gate.admit(40)
    with pytest.raises(ApiError, match=r"requests in flight at the limit \(2\)"):
        gate.admit(0)


def test_server_answers_503_with_retry_after_when_its_decoder_is_busy(export_dir):
    app = create_app(export_dir, threads=1, workers=1, max_waiting=0, timeout_s=5)
    predictor = app.state.predictor
    original, started = predictor.predict_image, threading.Event()

    def slow(*args, **kwargs):
        started.set()
        time.sleep(0.5)
        return original(*args, **kwargs)

    predictor.predict_image = slow
    files = {"file": ("a.png", image_bytes(40, 30), "image/png")}

    async def two(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            first = asyncio.create_task(c.post("/predict", files=files))
            await asyncio.to_thread(started.wait, 5)
            second = await c.post("/predict", files=files)
            return [await first, second]

    with background_server(app) as base:
        first, second = run(two(base))
    assert first.status_code == 200
    assert second.status_code == 503
    assert second.headers["retry-after"] == "1"
    assert second.json() == {
        "error": "busy",
        "detail": "server busy: requests in flight at the limit (1); retry in 1 s",
    }
