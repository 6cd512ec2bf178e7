"""HTTP API + web page for an exported model (FastAPI).

    POST /predict   multipart/form-data with one image in the field "file" -> JSON result
    GET  /health    liveness + limits          GET /model   model card (JSON)
    GET  /          web page (static files shipped in the package, no CDN)
    GET  /docs, /redoc   OpenAPI UIs, only with docs=True (`dermae serve --docs`): FastAPI
                    loads their scripts from a CDN, which fails offline

Uploads are read into memory with a hard byte limit and parsed there (Starlette's
form parser spools files over 1 MB to disk; uploads are never written to disk here).
The pixel count is checked from the image header before decoding. Memory is bounded by
`DecodeGate`: requests in flight and their declared bytes are capped on arrival, and
decodes run at most `workers` at once and at most `max_pixels` decoded pixels together
(one image of any allowed size always fits); a request that cannot get in is answered
503 with Retry-After. Decoding and inference run in a thread pool under a timeout.
Every response carries the page's security headers (CSP, nosniff, no-referrer). Every
error is JSON {"error": <code>, "detail": <message>} with a matching status code:

    400 malformed multipart body, or more than one file in the form (one image a request)
    408 upload not received within the timeout
    413 upload over max_upload_bytes, or image over max_pixels (decompression bomb)
    415 request not multipart, part not an image type, image format not accepted
    422 no "file" field, the bytes are not a decodable image (truncated, corrupt), or the
        image is smaller than MIN_IMAGE_SIDE on a side
    503 server busy (too many requests or decodes in flight): retry after Retry-After s
    504 inference did not finish within timeout_s
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from dermae.deploy.card import CARD_JSON, NOTICE
from dermae.deploy.images import DEFAULT_MAX_PIXELS, ImageError, inspect_image
from dermae.deploy.predictor import Predictor

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
FILE_FIELD = "file"
# Part types browsers and curl send for photos; anything else is refused before decoding.
ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")
IMAGE_ERROR_STATUS = {
    "too_many_pixels": 413,
    "unsupported_format": 415,
    "not_an_image": 422,
    "truncated": 422,
    "too_small": 422,
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# /docs and /redoc (opt-in) run FastAPI's inline script and CDN assets; everything else is
# as strict as the page.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src blob:; connect-src 'self'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")
RETRY_AFTER_S = 1
# Decodes above this many pixels hand their freed memory back to the OS at once (glibc
# keeps freed heap otherwise: the issue measured ~1 GB kept after six 7000x7000 PNGs).
TRIM_ABOVE_PIXELS = 4_000_000


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers


def error_response(
    status: int, error: str, detail: Any, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def busy(detail: str) -> ApiError:
    return ApiError(
        503, "busy", f"{detail}; retry in {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)}
    )


class DecodeGate:
    """Bounds what the server holds at once, so memory stays bounded under any load.

    Requests: at most `max_requests` in flight and `max_bytes` of declared uploads (one is
    always let in), else 503 at once. Decodes: at most `slots` at a time and `max_pixels`
    decoded pixels together (one image always fits); others wait in arrival order, at most
    `max_waiting` of them and up to their timeout, else 503. Used from the event loop only.
    """

    def __init__(
        self, slots: int, max_pixels: int, max_waiting: int, max_requests: int, max_bytes: int
    ):
        self.slots, self.max_pixels, self.max_waiting = slots, max_pixels, max_waiting
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.requests = self.bytes = self.active = self.pixels = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    def describe(self) -> dict[str, int]:
        return {
            "decode_slots": self.slots,
            "decode_pixels": self.max_pixels,
            "max_waiting": self.max_waiting,
            "max_requests": self.max_requests,
            "max_inflight_bytes": self.max_bytes,
        }

    # ---- requests
    def admit(self, nbytes: int) -> None:
        if self.requests >= self.max_requests:
            raise busy(f"server busy: requests in flight at the limit ({self.max_requests})")
        if self.requests and self.bytes + nbytes > self.max_bytes:
            raise busy(f"server busy: uploads in flight would pass {self.max_bytes:,} bytes")
        self.requests += 1
        self.bytes += nbytes

    def leave(self, nbytes: int) -> None:
        self.requests -= 1
        self.bytes -= nbytes

    # ---- decodes
    def _fits(self, pixels: int) -> bool:
        return self.active < self.slots and (
            self.active == 0 or self.pixels + pixels <= self.max_pixels
        )

    def _take(self, pixels: int) -> None:
        self.active += 1
        self.pixels += pixels

    async def acquire(self, pixels: int, timeout_s: float) -> None:
        if not self._waiters and self._fits(pixels):
            self._take(pixels)
            return
        if len(self._waiters) >= self.max_waiting:
            raise busy(
                f"server busy: {self.active} images decoding and {len(self._waiters)} waiting, "
                "the most it queues"
            )
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((pixels, granted))
        try:
            await asyncio.wait_for(asyncio.shield(granted), max(timeout_s, 0.0))
        except TimeoutError:
            self._abandon(granted, pixels)
            raise busy("server busy decoding other images") from None
        except asyncio.CancelledError:  # the client went away while waiting
            self._abandon(granted, pixels)
            raise

    def _abandon(self, granted: asyncio.Future, pixels: int) -> None:
        if granted.done() and not granted.cancelled():
            self.release(pixels)  # granted in the same instant: give it back
        else:
            granted.cancel()  # `release` skips it

    def release(self, pixels: int) -> None:
        self.active -= 1
        self.pixels -= pixels
        while self._waiters and (self._waiters[0][1].done() or self._fits(self._waiters[0][0])):
            waiting, granted = self._waiters.popleft()
            if not granted.done():  # cancelled ones timed out
                self._take(waiting)
                granted.set_result(None)


def _malloc_trim() -> Callable[[], Any]:
    """glibc's malloc_trim(0), or a no-op elsewhere."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


release_memory = _malloc_trim()


class SecurityHeaders:
    """ASGI middleware: the page's security headers on every response, errors included."""

    def __init__(self, app: Any, docs: bool):
        self.app, self.docs = app, docs

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(PAGE_HEADERS)
        if self.docs and scope["path"].startswith(DOCS_PATHS):
            headers["Content-Security-Policy"] = DOCS_CSP
        extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in extra}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)

    @property
    def disposition(self) -> dict[str, str]:
        _, params = parse_options_header(self.headers.get("content-disposition", ""))
        return {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in params.items()}

    @property
    def content_type(self) -> str:
        value, _ = parse_options_header(self.headers.get("content-type", ""))
        return value.decode("latin-1").lower()


def parse_multipart(body: bytes | bytearray, content_type: str) -> list[Part]:
    """In-memory multipart/form-data parse: the parts in order."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with the image in the field '{FILE_FIELD}', "
            f"not '{ctype.decode('latin-1') or 'no content type'}'",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "multipart body without a boundary parameter")
    parts: list[Part] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}

    def on_part_begin() -> None:
        parts.append(Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        name = header["field"].decode("latin-1").strip().lower()
        parts[-1].headers[name] = header["value"].decode("latin-1").strip()
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as err:
        raise ApiError(400, "bad_request", f"malformed multipart body: {err}") from None
    return parts


def file_part(parts: list[Part]) -> Part | None:
    """The one image of the form; 400 when it carries more than one file (none are used:
    answering for one of them would leave the others silently unanswered)."""
    files = [
        p for p in parts if p.disposition.get("name") == FILE_FIELD or "filename" in p.disposition
    ]
    if len(files) > 1:
        raise ApiError(
            400,
            "too_many_files",
            f"the form carries {len(files)} files; send one image per request in the field "
            f"'{FILE_FIELD}' (for many images use `dermae predict` or one request each)",
        )
    return next((p for p in files if p.disposition.get("name") == FILE_FIELD), None)


async def read_body(request: Request, max_bytes: int) -> bytearray:
    """The request body, refusing more than `max_bytes` (declared or actually sent)."""
    declared = request.headers.get("content-length")
    too_big = ApiError(
        413,
        "upload_too_large",
        f"upload is larger than the limit of {max_bytes:,} bytes; send a smaller image",
    )
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_big
    return body  # not copied to bytes: uploads are large, the parser reads a bytearray


def _static_dir() -> Path:
    return Path(str(resources.files("dermae.deploy") / "static"))


def _model_card(model_dir: Path, predictor: Predictor) -> dict[str, Any]:
    path = model_dir / CARD_JSON
    if path.exists():
        return json.loads(path.read_text())
    # A bare checkpoint folder has no card: describe what is known.
    return {"notice": NOTICE, "model": predictor.describe(), "card": "none (not an export folder)"}


PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG, PNG, WebP, BMP or TIFF image",
                        }
                    },
                }
            }
        },
    },
    "responses": {
        str(code): {"description": text}
        for code, text in {
            400: "malformed form, or more than one file",
            413: "upload or pixel count over the limit",
            415: "not multipart, or not an accepted image type",
            422: "no file field, not a decodable image, or an image too small",
            503: "busy: retry after the Retry-After header's seconds",
            504: "inference timed out",
        }.items()
    },
}


def create_app(
    model_dir: str | Path,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = 10.0,
    backend: str = "onnx",
    model_file: str | None = None,
    workers: int = 2,
    threads: int | None = None,
    docs: bool = False,
    max_waiting: int = 128,
    max_inflight_bytes: int | None = None,
) -> FastAPI:
    """The API for one model folder (an export folder; backend="torch" for a checkpoint).

    `docs` serves /docs and /redoc (CDN assets). At most `workers` images decode at once,
    together at most `max_pixels` pixels; `max_waiting` more wait; uploads in flight are
    capped at `max_inflight_bytes` (default 3 x max_upload_bytes). Beyond that: 503."""
    model_dir = Path(model_dir)
    if backend == "onnx" and not any(model_dir.glob("*.onnx")):
        backend = "auto"  # a checkpoint folder given: serve it with PyTorch
    predictor = Predictor(
        model_dir, backend=backend, model_file=model_file, threads=threads, max_pixels=max_pixels
    )
    card = _model_card(model_dir, predictor)
    gate = DecodeGate(
        slots=workers,
        max_pixels=max_pixels,
        max_waiting=max_waiting,
        max_requests=max_waiting + workers,
        max_bytes=max_inflight_bytes or 3 * max_upload_bytes,
    )

    def predict_job(data: bytes, name: str, pixels: int) -> dict[str, Any]:
        try:
            return predictor.predict_image(data, name)
        finally:
            if pixels > TRIM_ABOVE_PIXELS:
                release_memory()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        try:
            yield
        finally:
            app.state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="dermae skin-lesion classifier",
        description=f"{NOTICE}\n\nModel: {predictor.spec.get('arch')} ({predictor.backend}).",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.add_middleware(SecurityHeaders, docs=docs)
    app.state.predictor = predictor
    app.state.gate = gate
    app.state.limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "timeout_s": timeout_s,
    }

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, names.get(exc.status_code, "http_error"), exc.detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", exc.errors())

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "backend": predictor.backend,
            "model_file": predictor.model_file,
            "arch": predictor.spec.get("arch"),
            "limits": app.state.limits,
            "concurrency": gate.describe(),
        }

    @app.get("/model")
    async def model_card() -> dict[str, Any]:
        return card

    @app.post("/predict", openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            parse_multipart(b"", content_type)  # raises the 415 with its message
        declared = request.headers.get("content-length", "")
        nbytes = min(int(declared), max_upload_bytes) if declared.isdigit() else max_upload_bytes
        gate.admit(nbytes)
        try:
            return await handle(request, content_type, started)
        finally:
            gate.leave(nbytes)

    async def handle(request: Request, content_type: str, started: float) -> dict[str, Any]:
        try:
            body = await asyncio.wait_for(read_body(request, max_upload_bytes), timeout_s)
        except TimeoutError:
            raise ApiError(408, "request_timeout", "upload not received in time") from None
        part = file_part(parse_multipart(body, content_type))
        del body  # the part holds its own copy of the image bytes
        if part is None:
            raise ApiError(
                422, "missing_file", f"no '{FILE_FIELD}' field in the form; attach the image there"
            )
        if not part.data:
            raise ApiError(422, "empty_file", f"the '{FILE_FIELD}' field is empty")
        if part.content_type and not part.content_type.startswith(ACCEPTED_PART_TYPES):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"'{part.content_type}' is not an image type; upload a JPEG, PNG, WebP, BMP "
                "or TIFF",
            )
        name = (part.disposition.get("filename") or "upload")[:200]
        data = bytes(part.data)
        del part
        try:
            _, (width, height) = inspect_image(data, max_pixels, name)  # header only
        except ImageError as err:
            raise ApiError(IMAGE_ERROR_STATUS.get(err.code, 422), err.code, str(err)) from None
        pixels = width * height
        deadline = started + timeout_s
        await gate.acquire(pixels, deadline - time.perf_counter())
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(app.state.executor, predict_job, data, name, pixels)
        # The slot is given back when the decode ends, not when the client stops waiting.
        job.add_done_callback(lambda _: gate.release(pixels))
        try:
            result = await asyncio.wait_for(
                asyncio.shield(job), max(deadline - time.perf_counter(), 0.0)
            )
        except TimeoutError:
            raise ApiError(
                504, "timeout", f"inference did not finish within {timeout_s:g} s; try again"
            ) from None
        except ImageError as err:
            raise ApiError(IMAGE_ERROR_STATUS.get(err.code, 422), err.code, str(err)) from None
        return {
            **result,
            "class_names": predictor.class_names,
            "malignant_classes": list(predictor.spec["malignant_classes"]),
            "model": {"arch": predictor.spec.get("arch"), "backend": predictor.backend},
            "notice": NOTICE,
            "elapsed_ms": (time.perf_counter() - started) * 1000,
        }

    static = _static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(static / "index.html")  # headers: SecurityHeaders

    return app


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", start_timeout_s: float = 20.0):
    """Run `app` with uvicorn in a thread on a free port; yields the base URL (tests, demos)."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start within {start_timeout_s} s")
            time.sleep(0.05)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    **limits: Any,
) -> None:
    """Run the API with uvicorn (blocking). `limits` go to `create_app`."""
    import uvicorn

    uvicorn.run(create_app(model_dir, **limits), host=host, port=port, log_level="info")


__all__ = ["DecodeGate", "background_server", "create_app", "parse_multipart", "serve"]
