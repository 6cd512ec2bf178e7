"""`fetch_dataset` against a local HTTP server that honours Range: layout, resume, checksum."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from dermae.data.errors import DataError
from dermae.data.fetch import fetch_dataset
from dermae.data.ingest import ingest_dataset
from dermae.data.toy import write_toy_dataset


class RangeHandler(BaseHTTPRequestHandler):
    """Serves `server.payload` at any path; honours `Range: bytes=N-` unless told not to, and
    can break off after `server.cut_at` bytes (a dropped connection)."""

    def do_GET(self) -> None:
        server = self.server
        data = server.payload
        header = self.headers.get("Range")
        start = 0
        if header and server.honour_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                server.log.append((header, 416, 0))
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_at is not None:
            body = body[: server.cut_at]
        self.wfile.write(body)
        server.log.append((header, 206 if start else 200, len(body)))

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.payload, httpd.log, httpd.cut_at, httpd.honour_range = b"", [], None, True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(httpd: ThreadingHTTPServer, name: str) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/{name}"


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def dataverse_like_zip(tmp_path: Path) -> tuple[bytes, pd.DataFrame]:
    """Outer zip holding the two image zips, a tab-separated metadata table and an unlisted
    extra image archive, as the Harvard Dataverse bundle does."""
    src = tmp_path / "src"
    truth = write_toy_dataset(src, "ham10000_original", lesions_per_class=2, seed=4)
    parts = {}
    for part in (1, 2):
        folder = src / f"HAM10000_images_part_{part}"
        parts[f"HAM10000_images_part_{part}.zip"] = _zip_bytes(
            {p.name: p.read_bytes() for p in sorted(folder.glob("*.jpg"))}
        )
    metadata = pd.read_csv(src / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    parts["HAM10000_metadata.tab"] = metadata.to_csv(sep="\t", index=False).encode()
    any_image = next((src / "HAM10000_images_part_1").glob("*.jpg")).read_bytes()
    parts["ISIC2018_Task3_Test_Images.zip"] = _zip_bytes({"ISIC_9999999.jpg": any_image})
    return _zip_bytes(parts), truth


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_ready(to: Path, truth: pd.DataFrame) -> None:
    assert (to / "HAM10000_metadata.csv").is_file()
    assert sorted(p.stem for p in (to / "images").iterdir()) == sorted(truth["image_id"])
    rows = ingest_dataset(to).rows.set_index("image_id").sort_index()
    truth = truth.set_index("image_id").sort_index()
    assert list(rows["diagnosis"]) == list(truth["diagnosis"])
    assert list(rows["group_id"]) == list(truth["lesion_id"])
    assert not (to / ".extract").exists()


def test_fetch_dataverse_like_bundle(server, tmp_path: Path) -> None:
    payload, truth = dataverse_like_zip(tmp_path)
    server.payload = payload
    to = tmp_path / "ham"
    fetch_dataset("ham10000", to, url=_url(server, "bundle"), sha256=_sha(payload), progress=False)
    _assert_ready(to, truth)
    assert "ISIC_9999999.jpg" not in {p.name for p in (to / "images").iterdir()}
    record = json.loads((to / "FETCH.json").read_text())
    assert record["sha256"] == _sha(payload) and record["images"] == len(truth)
    assert not (to / ".download").exists()
    assert server.log == [(None, 200, len(payload))]
    fetch_dataset("ham10000", to, url=_url(server, "bundle"), progress=False)
    assert len(server.log) == 1  # already there: no second download


def test_resume_after_a_dropped_connection(server, tmp_path: Path) -> None:
    payload, truth = dataverse_like_zip(tmp_path)
    server.payload, server.cut_at = payload, len(payload) // 3
    to = tmp_path / "ham"
    url = _url(server, "HAM10000.zip")
    with pytest.raises(DataError, match="run the same command again to resume"):
        fetch_dataset("ham10000", to, url=url, sha256=_sha(payload), progress=False)
    part = to / ".download" / "HAM10000.zip.part"
    assert part.stat().st_size == len(payload) // 3
    server.cut_at = None
    fetch_dataset("ham10000", to, url=url, sha256=_sha(payload), progress=False)
    cut = len(payload) // 3
    assert server.log[-1] == (f"bytes={cut}-", 206, len(payload) - cut)  # only the rest
    _assert_ready(to, truth)


def test_resume_a_truncated_tar_gz_partial_file(server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    truth = write_toy_dataset(src, "ham10000", lesions_per_class=1, seed=5)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(src, arcname="HAM10000")
    payload = buffer.getvalue()
    server.payload = payload
    to = tmp_path / "ham"
    part = to / ".download" / "ham.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:1000])
    fetch_dataset(
        "ham10000", to, url=_url(server, "ham.tar.gz"), sha256=_sha(payload), progress=False
    )
    assert server.log == [("bytes=1000-", 206, len(payload) - 1000)]
    assert (to / "labels.csv").is_file()
    assert sorted(p.stem for p in (to / "images").iterdir()) == sorted(truth["image_id"])
    assert len(ingest_dataset(to).rows) == len(truth)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path: Path) -> None:
    payload, truth = dataverse_like_zip(tmp_path)
    server.payload, server.honour_range = payload, False
    to = tmp_path / "ham"
    part = to / ".download" / "b.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not be kept")
    fetch_dataset("ham10000", to, url=_url(server, "b.zip"), sha256=_sha(payload), progress=False)
    assert server.log == [("bytes=29-", 200, len(payload))]
    _assert_ready(to, truth)


def test_checksum_mismatch_is_refused(server, tmp_path: Path, monkeypatch) -> None:
    payload, _ = dataverse_like_zip(tmp_path)
    server.payload = payload
    to = tmp_path / "ham"
    monkeypatch.setenv("DERMAE_HAM10000_URL", _url(server, "ham.zip"))  # URL from the env
    with pytest.raises(DataError) as err:
        fetch_dataset("ham10000", to, sha256="0" * 64, progress=False)
    message = str(err.value)
    assert "checksum mismatch" in message and _sha(payload) in message and "0" * 64 in message
    assert not (to / ".download" / "ham.zip").exists()
    assert not (to / ".download" / "ham.zip.part").exists()
    assert not (to / "images").exists()


def test_unsafe_archive_and_unknown_dataset(server, tmp_path: Path) -> None:
    server.payload = _zip_bytes({"../evil.txt": b"x", "HAM10000_metadata.csv": b"a,b\n"})
    with pytest.raises(DataError, match="unsafe path"):
        fetch_dataset("ham10000", tmp_path / "ham", url=_url(server, "x.zip"), progress=False)
    assert not (tmp_path / "evil.txt").exists()
    server.payload = b"<html>not an archive</html>"
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        fetch_dataset("ham10000", tmp_path / "ham2", url=_url(server, "y.zip"), progress=False)
    with pytest.raises(DataError, match="unknown dataset 'isic2099'"):
        fetch_dataset("isic2099", tmp_path / "x")


def test_unreachable_url_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="DERMAE_HAM10000_URL"):
        fetch_dataset(
            "ham10000", tmp_path / "ham", url="http://127.0.0.1:9/none.zip", progress=False
        )
