"""Decode every image once into a square uint8 array, `images.npy` [N, S, S, 3].

Square policy: center-crop the largest square, then resize it to S (the same as resizing the
shorter side to S and center-cropping). Padding would keep the whole 4:3 field of view, but a
quarter of every padded HAM10000 image would be constant bars that the diffusion model learns
to draw and the MAE spends patches reconstructing; dermoscopy centers the lesion, so the
cropped side margins are mostly skin.

Speed, measured on HAM10000 (10,015 JPEGs of 200x150, 64 px, 2-core machine shared with
other jobs): one process needs 4.8 s of CPU (~0.5 ms per image; 8-15 s wall under load);
`workers=2` (data.num_workers) gave 10-14 s wall under the same load (identical bytes), so the
pool is opt-in: it pays on idle many-core machines and large originals, not here. JPEG
`draft` (DCT-domain down-scaling) is used only where it keeps at least 2x the target size, so
it speeds up large originals (600x450 at 64 px decodes at half scale) without costing detail;
other formats are box-reduced by the same rule right after decoding (`dermae.data.imageio`,
which also holds the pixel limit shared with predict and serve).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dermae.data.errors import DataError
from dermae.data.imageio import ImageError, decode_rgb

CACHE_VERSION = 2  # bump when the decode/resize recipe changes (2: reduce, pixel limit)
RESAMPLE = Image.Resampling.BICUBIC  # antialiased when down-scaling in PIL


@dataclass
class CacheReport:
    path: Path
    key: str
    image_size: int
    failures: dict[int, str] = field(default_factory=dict)  # row -> reason (row left zero)
    converted: dict[str, int] = field(default_factory=dict)  # original mode -> count
    reused: bool = False
    seconds: float = 0.0


def center_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centered square of side min(width, height) (odd margins: one pixel more right/below)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def _decode(path: str | Path, min_side: int) -> tuple[Image.Image, str | None, tuple[int, int]]:
    """(RGB image, conversion or None, full-resolution size); raises DataError."""
    try:
        return decode_rgb(path, min_side)  # the pixel limit and formats of predict and serve
    except ImageError as err:
        if err.code == "not_found":
            raise DataError(f"{path}: image file not found; add it or remove its row") from err
        raise DataError(
            f"{path}: cannot decode image ({err.detail}); replace the file or remove its row"
        ) from err


def load_rgb(path: str | Path, min_side: int = 0) -> tuple[Image.Image, str | None]:
    """Decode one image as RGB. Returns (image, conversion or None); raises DataError.

    `min_side` > 0 lets large images decode at a reduced scale that keeps both sides >= it."""
    image, conversion, _ = _decode(path, min_side)
    return image, conversion


def load_square(path: str | Path, size: int) -> tuple[np.ndarray, str | None]:
    """uint8 [size, size, 3]: the centered square of the image, resized to `size`."""
    image, conversion, full_size = _decode(path, min_side=2 * size)
    box = center_box(*full_size)
    if image.size == full_size:
        square = image.crop(box).resize((size, size), RESAMPLE)
    else:  # drafted at a reduced scale: the same square, in the reduced image's coordinates
        # Draft and reduce scale by an integer factor and round the size up, so the scale is
        # 1/factor, not the ratio of the sizes (which is off by up to a pixel of the original).
        sx = 1 / round(full_size[0] / image.size[0])
        sy = 1 / round(full_size[1] / image.size[1])
        scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        square = image.resize((size, size), RESAMPLE, box=scaled)
    return np.asarray(square, dtype=np.uint8), conversion


def _load_one(job: tuple[str, int]) -> tuple[np.ndarray | None, str | None, str | None]:
    """(pixels, conversion, error message): picklable, for the process pool."""
    path, size = job
    try:
        pixels, conversion = load_square(path, size)
    except DataError as err:
        return None, None, str(err)
    return pixels, conversion, None


def cache_key(paths: Sequence[str | Path], image_size: int) -> str:
    """Hash of the ordered paths (with size and mtime) and the image size."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{image_size}|{RESAMPLE.name}\n".encode())
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def _report_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".cache.json")


def check_cache_file(out_path: str | Path) -> str:
    """'' when `out_path` is whole, else what is wrong with it. Cheap (no pixels read): the
    .npy header must give the shape its images.cache.json records, and the file must hold
    exactly that many bytes (a copy or write cut short leaves a valid header on a short file)."""
    out_path = Path(out_path)
    try:
        meta = json.loads(_report_path(out_path).read_text())
        side = int(meta["image_size"])
        expected = (int(meta["n"]), side, side, 3)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its record {_report_path(out_path).name} is missing or unreadable ({err})"
    try:
        with open(out_path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        size = os.path.getsize(out_path)
    except (OSError, ValueError) as err:
        return f"not a readable .npy file ({err})"
    if shape != expected or dtype != np.uint8 or fortran:
        return f"its header says {dtype} {shape}, expected uint8 {expected}"
    want = offset + int(np.prod(shape))
    if size != want:
        return f"{size} bytes on disk, {want} expected: the file is truncated or padded"
    return ""


def _read_report(out_path: Path, key: str, n: int, image_size: int) -> CacheReport | None:
    report_path = _report_path(out_path)
    if not (out_path.exists() and report_path.exists()):
        return None
    try:
        meta = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or (meta.get("n"), meta.get("image_size")) != (n, image_size):
        return None
    if check_cache_file(out_path):
        return None  # damaged: rebuild
    return CacheReport(
        path=out_path,
        key=key,
        image_size=image_size,
        failures={int(i): r for i, r in meta["failures"]},
        converted=dict(meta["converted"]),
        reused=True,
        seconds=float(meta["seconds"]),
    )


def _reserve_disk(path: Path) -> None:
    """Allocate the whole memory-mapped file now: a full disk then fails here with ENOSPC
    instead of killing the process with SIGBUS when a page of the map is first written."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # file systems without fallocate keep the old behaviour
    finally:
        os.close(fd)


def build_image_cache(
    paths: Sequence[str | Path],
    image_size: int,
    out_path: str | Path,
    progress: bool = True,
    workers: int = 0,
) -> CacheReport:
    """Write `out_path` (uint8 [N, S, S, 3], row i = paths[i]); reuse it when it was built
    from the same inputs. Images that fail to decode leave a zero row and are listed in
    `failures`; the caller decides whether that is an error. `workers` > 1 decodes in that
    many processes (worth it for large originals on many cores; HAM10000 decodes in seconds)."""
    if image_size < 8:
        raise DataError(f"data.image_size={image_size} is too small; use 8 or more (e.g. 64)")
    out_path = Path(out_path)
    key = cache_key(paths, image_size)
    reused = _read_report(out_path, key, len(paths), image_size)
    if reused is not None:
        return reused

    start = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    shape = (len(paths), image_size, image_size, 3)
    failures: dict[int, str] = {}
    converted: Counter[str] = Counter()
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _reserve_disk(tmp)
        jobs = [(str(p), image_size) for p in paths]
        bar = tqdm(
            total=len(jobs),
            desc=f"cache {image_size}px",
            unit="img",
            disable=None if progress else True,
        )
        with bar, ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
            results = pool.map(_load_one, jobs, chunksize=64) if pool else map(_load_one, jobs)
            for i, (pixels, conversion, error) in enumerate(results):
                bar.update()
                if error is not None:
                    failures[i] = error
                    continue
                array[i] = pixels
                if conversion is not None:
                    converted[conversion] += 1
        array.flush()
        del array
        os.replace(tmp, out_path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # never leave a half-written cache behind
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            need = int(np.prod(shape)) / 2**20
            raise DataError(
                f"no space left on the device of {out_path} (the image cache needs {need:.1f} "
                "MiB): free some space, or set run_dir to a folder on another disk"
            ) from err
        raise
    report = CacheReport(
        path=out_path,
        key=key,
        image_size=image_size,
        failures=failures,
        converted=dict(sorted(converted.items())),
        reused=False,
        seconds=time.perf_counter() - start,
    )
    meta = {
        "key": key,
        "image_size": image_size,
        "n": len(paths),
        "failures": sorted(failures.items()),
        "converted": report.converted,
        "seconds": round(report.seconds, 3),
    }
    _report_path(out_path).write_text(json.dumps(meta, indent=1))
    return report
