"""Tiny prepared datasets on disk, in the layout of `dermae.data.prepared` (manifest.csv,
images.npy, info.json, optional synthetic/), so stage entry points can run end to end in tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dermae.data.prepared import MANIFEST_COLUMNS, data_dir

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
HAM_MALIGNANT = ["akiec", "bcc", "mel"]


def class_images(labels: np.ndarray, size: int, num_classes: int, rng) -> np.ndarray:
    """uint8 [N, size, size, 3]: dark noise plus a bright square whose place and colour
    depend on the class, so a tiny model can learn the labels in a few steps."""
    images = rng.integers(0, 60, size=(len(labels), size, size, 3), dtype=np.uint8)
    side = max(2, size // 3)
    for i, c in enumerate(labels):
        row, col = divmod(int(c) % 9, 3)
        channel = int(c) % 3
        images[i, row * side : (row + 1) * side, col * side : (col + 1) * side, channel] = 230
    return images


def _manifest(labels, classes, malignant, split, source, start) -> pd.DataFrame:
    ids = [f"{source}_{split}_{i}" for i in range(len(labels))]
    return pd.DataFrame(
        {
            "image_id": ids,
            "path": "",
            "diagnosis": [classes[c] for c in labels],
            "label": labels,
            "malignant": [int(classes[c] in malignant) for c in labels],
            "group_id": ids,
            "age": 50.0,
            "sex": "female",
            "site": "back",
            "dx_type": "histo",
            "split": split,
            "source": source,
            "cache_index": np.arange(start, start + len(labels)),
        }
    )[MANIFEST_COLUMNS]


def make_prepared(
    run_dir: str | Path,
    n_per_class: int | dict[str, int] = 4,
    size: int = 16,
    classes: list[str] | None = None,
    malignant: list[str] | None = None,
    synthetic_per_class: int = 0,
    seed: int = 0,
) -> Path:
    """Write `<run_dir>/data/`: `n_per_class` real images per class in every split (or a dict
    split -> count), plus `synthetic_per_class` synthetic train images per class. Returns run_dir.
    """
    classes = list(classes or HAM_CLASSES)
    if malignant is None:
        malignant = [c for c in HAM_MALIGNANT if c in classes] or classes[:1]
    counts = (
        n_per_class
        if isinstance(n_per_class, dict)
        else {s: n_per_class for s in ("train", "val", "test")}
    )
    rng = np.random.default_rng(seed)
    root = data_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    frames, arrays, start = [], [], 0
    for split, n in counts.items():
        labels = np.repeat(np.arange(len(classes)), n)
        frames.append(_manifest(labels, classes, malignant, split, "real", start))
        arrays.append(class_images(labels, size, len(classes), rng))
        start += len(labels)
    pd.concat(frames).to_csv(root / "manifest.csv", index=False)
    np.save(root / "images.npy", np.concatenate(arrays))
    if synthetic_per_class:
        labels = np.repeat(np.arange(len(classes)), synthetic_per_class)
        (root / "synthetic").mkdir(exist_ok=True)
        synth = _manifest(labels, classes, malignant, "train", "synthetic", 0)
        synth.to_csv(root / "synthetic" / "manifest.csv", index=False)
        np.save(root / "synthetic" / "images.npy", class_images(labels, size, len(classes), rng))
    info = {
        "class_names": classes,
        "malignant_classes": malignant,
        "image_size": size,
        "counts": {s: int(n * len(classes)) for s, n in counts.items()},
        "skipped": [],
    }
    (root / "info.json").write_text(json.dumps(info))
    return Path(run_dir)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny models run faster on one thread, and much faster on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
