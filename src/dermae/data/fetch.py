"""`dermae data fetch`: download a dataset archive, resume it, verify it, lay it out for prepare.

The default HAM10000 URL is the official Harvard Dataverse release (doi:10.7910/DVN/DBW86T),
whose bundle is a zip holding the two image zips and the metadata table. Machines without
internet (like the one this was built on) point `url` / DERMAE_HAM10000_URL at a mirror or a
`file://` path instead. The result is `<to>/HAM10000_metadata.csv` (or labels.csv) + `<to>/images/`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm.auto import tqdm

from dermae.data.errors import DataError
from dermae.data.ingest import IMAGE_EXTENSIONS, ingest_dataset

CHUNK = 1 << 20
DATASETS: dict[str, dict[str, str | None]] = {
    "ham10000": {
        "url": "https://dataverse.harvard.edu/api/access/dataset/:persistentId/"
        "?persistentId=doi:10.7910/DVN/DBW86T",
        "url_env": "DERMAE_HAM10000_URL",
        "sha256_env": "DERMAE_HAM10000_SHA256",
        # Dataverse builds its bundle zip on request, so there is no stable published checksum.
        "sha256": None,
    }
}
METADATA_NAMES = ("labels.csv", "HAM10000_metadata.csv", "HAM10000_metadata.tab")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _archive_name(url: str, name: str) -> str:
    base = PurePosixPath(urllib.request.urlparse(url).path).name
    return base if base.lower().endswith(ARCHIVE_SUFFIXES) else f"{name}.download"


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part` with an HTTP Range request, and check
    the SHA-256 when given (a mismatching file is deleted and an error raised)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    dest.unlink(missing_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "dermae"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the partial file is complete
            response = None
        else:
            raise DataError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DataError(
            f"cannot reach {url} ({err}). Without internet, download the archive elsewhere and "
            "pass its location as url= (a file:// path works) or DERMAE_HAM10000_URL"
        ) from err
    if response is not None:
        with response:
            status = getattr(response, "status", None) or 200
            if offset and status == 206:
                mode = "ab"
                print(f"fetch: resuming {dest.name} at byte {offset}")
            else:  # the server ignored the Range header: start again
                mode, offset = "wb", 0
            length = response.headers.get("Content-Length")
            expected = offset + int(length) if length is not None else None
            received = offset
            bar = tqdm(
                total=expected,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=f"fetch {dest.name}",
                disable=None if progress else True,
            )
            with open(part, mode) as f, bar:
                try:
                    while block := response.read(CHUNK):
                        f.write(block)
                        received += len(block)
                        bar.update(len(block))
                except (OSError, http.client.HTTPException) as err:
                    raise DataError(
                        f"download of {url} broke off at {received} bytes ({err}); run the "
                        "same command again to resume"
                    ) from err
            if expected is not None and received < expected:
                raise DataError(
                    f"download of {url} stopped at {received} of {expected} bytes; run the same "
                    "command again to resume"
                )
    os.replace(part, dest)
    actual = sha256_of(dest)
    if sha256 is not None and actual != sha256.lower():
        dest.unlink()
        raise DataError(
            f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}. "
            "Refusing to use it; the file was deleted. Check the URL and the checksum, then "
            "run again"
        )
    if sha256 is None:
        print(f"fetch: sha256 {actual} (no checksum given, so it was not verified)")
    return dest


def _inside(root: Path, member: str) -> bool:
    target = (root / member).resolve()
    return target == root or root in target.parents


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) archive into `dest`, refusing paths that escape it."""
    archive, dest = Path(archive), Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            bad = [n for n in zf.namelist() if not _inside(dest, n)]
            if bad:
                raise DataError(f"{archive}: unsafe path {bad[0]!r} in archive; not extracting")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(dest, filter="data")  # rejects absolute paths, '..', devices
            except tarfile.FilterError as err:
                raise DataError(f"{archive}: unsafe member in archive ({err})") from err
    else:
        raise DataError(
            f"{archive} is neither a zip nor a tar archive; check the URL (it should point to "
            "the dataset archive, not a web page)"
        )
    return dest


def _extract_nested(folder: Path) -> None:
    """Dataverse bundles hold archives inside the archive (HAM10000_images_part_1.zip, ...)."""
    for _ in range(3):
        nested = [
            p
            for p in folder.rglob("*")
            if p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)
        ]
        if not nested:
            return
        for path in nested:
            stem = path.name
            for suffix in ARCHIVE_SUFFIXES:
                if stem.lower().endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
            extract_archive(path, path.parent / stem)
            path.unlink()


def _find_metadata(folder: Path) -> Path:
    for name in METADATA_NAMES:
        found = sorted(folder.rglob(name), key=lambda p: (len(p.parts), str(p)))
        if found:
            return found[0]
    raise DataError(
        f"the archive holds none of {', '.join(METADATA_NAMES)}; is this the HAM10000 release?"
    )


def arrange_ham10000(extracted: Path, to: Path) -> Path:
    """Move the metadata to `to/` (a Dataverse .tab becomes HAM10000_metadata.csv) and the
    listed images to `to/images/`. Returns the metadata CSV."""
    meta = _find_metadata(extracted)
    if meta.suffix == ".tab":
        table = pd.read_csv(meta, sep="\t", dtype=str, keep_default_na=False)
        target = to / "HAM10000_metadata.csv"
        table.to_csv(target, index=False)
    else:
        table = pd.read_csv(meta, dtype=str, keep_default_na=False)
        target = to / meta.name
        shutil.copyfile(meta, target)
    id_col = "image_id" if "image_id" in table.columns else None
    wanted = set(table[id_col].str.strip()) if id_col else None
    images = to / "images"
    images.mkdir(exist_ok=True)
    moved, extra = 0, 0
    for path in sorted(extracted.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if wanted is not None and path.stem not in wanted:
            extra += 1
            continue
        target_image = images / path.name
        if target_image.exists():
            raise DataError(
                f"the archive holds two images named {path.name}; cannot lay them out in one folder"
            )
        os.replace(path, target_image)
        moved += 1
    print(f"fetch: {moved} images -> {images}")
    if extra:
        print(f"fetch: {extra} image(s) not listed in {meta.name} were left out (not needed)")
    return target


def _already_there(to: Path) -> bool:
    images = to / "images"
    return (
        any((to / n).is_file() for n in METADATA_NAMES[:2])
        and images.is_dir()
        and any(images.iterdir())
    )


def fetch_dataset(
    name: str = "ham10000",
    to: str | Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    keep_archive: bool = False,
) -> Path:
    """Download, verify and extract dataset `name` into `to` (default data/<name>) so that
    `prepare` reads it. URL: argument > $DERMAE_<NAME>_URL > the official release."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; available: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    to = Path(to if to is not None else Path("data") / name).expanduser().resolve()
    if _already_there(to):
        print(f"fetch: {to} already holds {name}; nothing to do")
        return to
    url = url or os.environ.get(spec["url_env"] or "") or spec["url"]
    sha256 = sha256 or os.environ.get(spec["sha256_env"] or "") or spec["sha256"]
    to.mkdir(parents=True, exist_ok=True)
    archive = download(url, to / ".download" / _archive_name(url, name), sha256, progress)
    extracted = to / ".extract"
    if extracted.exists():
        shutil.rmtree(extracted)
    extract_archive(archive, extracted)
    _extract_nested(extracted)
    metadata = arrange_ham10000(extracted, to)
    shutil.rmtree(extracted)
    result = ingest_dataset(to)  # proves that prepare can read what was laid out
    (to / "FETCH.json").write_text(
        json.dumps(
            {
                "name": name,
                "url": url,
                "sha256": sha256_of(archive),
                "metadata": metadata.name,
                "images": len(result.rows),
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=1,
        )
    )
    if not keep_archive:
        shutil.rmtree(archive.parent)
    print(f"fetch: {name} ready in {to}: {len(result.rows)} images, {result.layout} layout")
    return to
