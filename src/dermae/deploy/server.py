"""HTTP API + web page for an exported model (FastAPI).

    POST /predict   multipart/form-data with one image in the field "file" -> JSON result
    GET  /health    liveness + limits          GET /model   model card (JSON)
    GET  /          web page (static files shipped in the package, no CDN)
    GET  /docs      OpenAPI UI (FastAPI default)

Uploads are read into memory with a hard byte limit and parsed there (Starlette's
form parser spools files over 1 MB to disk; uploads are never written to disk here).
The pixel count is checked from the image header before decoding. Decoding and
inference run in a thread pool under a timeout. Every error is JSON
{"error": <code>, "detail": <message>} with a matching status code:

    400 malformed multipart body       408 upload not received within the timeout
    413 upload over max_upload_bytes, or image over max_pixels (decompression bomb)
    415 request not multipart, part not an image type, image format not accepted
    422 no "file" field, or the bytes are not a decodable image (truncated, corrupt)
    504 inference did not finish within timeout_s
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
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
from dermae.deploy.images import DEFAULT_MAX_PIXELS, ImageError
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
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def error_response(status: int, error: str, detail: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


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


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """In-memory multipart/form-data parse: field name -> first part with that name."""
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
    fields: dict[str, Part] = {}
    for part in parts:
        fields.setdefault(part.disposition.get("name", ""), part)
    return fields


async def read_body(request: Request, max_bytes: int) -> bytes:
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
    return bytes(body)


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
            413: "upload or pixel count over the limit",
            415: "not multipart, or not an accepted image type",
            422: "no file field, or not a decodable image",
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
) -> FastAPI:
    """The API for one model folder (an export folder; backend="torch" for a checkpoint)."""
    model_dir = Path(model_dir)
    if backend == "onnx" and not any(model_dir.glob("*.onnx")):
        backend = "auto"  # a checkpoint folder given: serve it with PyTorch
    predictor = Predictor(
        model_dir, backend=backend, model_file=model_file, threads=threads, max_pixels=max_pixels
    )
    card = _model_card(model_dir, predictor)

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
    )
    app.state.predictor = predictor
    app.state.limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "timeout_s": timeout_s,
    }

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail)

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
        try:
            body = await asyncio.wait_for(read_body(request, max_upload_bytes), timeout_s)
        except TimeoutError:
            raise ApiError(408, "request_timeout", "upload not received in time") from None
        part = parse_multipart(body, content_type).get(FILE_FIELD)
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
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(app.state.executor, predictor.predict_image, data, name)
        try:
            result = await asyncio.wait_for(job, timeout_s)
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
        return FileResponse(static / "index.html", headers=PAGE_HEADERS)

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


__all__ = ["background_server", "create_app", "parse_multipart", "serve"]
