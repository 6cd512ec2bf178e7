"""A tiny prepared dataset in the layout of `dermae.data.prepared`, made from generated images.

Each class gets its own colour blob so that tiny models can learn it within a few steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dermae.data.cache import load_square
from dermae.data.classes import MALIGNANT_CODES
from dermae.data.prepared import MANIFEST_COLUMNS, data_dir

DEFAULT_CLASSES = ("mel", "nv", "bcc")


def class_image(rng: np.random.Generator, class_id: int, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: a skin-coloured background with a class-coloured disc."""
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = (200, 160, 140)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size * rng.uniform(0.18, 0.3)) ** 2
    colour = np.array([[120, 60, 40], [60, 40, 30], [170, 90, 110], [90, 90, 160]])[class_id % 4]
    image[disc] = colour
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_prepared(
    run_dir: str | Path,
    n_per_class: int = 12,
    size: int = 16,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    seed: int = 0,
    source_size: int | None = None,
) -> Path:
    """Write manifest.csv / images.npy / info.json; splits 60/20/20 by lesion (2 images each).

    `source_size`: also write each image as a PNG of that size under `<run_dir>/sources/`
    (the manifest's paths), cached at `size` by the real image loader, so the data can be
    cached again at another size (`PreparedData.at_size`)."""
    rng = np.random.default_rng(seed)
    root = data_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    sources = Path(run_dir) / "sources"
    if source_size is not None:
        sources.mkdir(parents=True, exist_ok=True)
    rows, images = [], []
    for label, name in enumerate(classes):
        for i in range(n_per_class):
            lesion = i // 2  # two images per lesion
            fraction = lesion / max(1, (n_per_class + 1) // 2)
            split = "train" if fraction < 0.6 else ("val" if fraction < 0.8 else "test")
            path = f"/synthetic/{name}_{i:03d}.png"
            if source_size is None:
                images.append(class_image(rng, label, size))
            else:
                path = str(sources / f"{name}_{i:03d}.png")
                Image.fromarray(class_image(rng, label, source_size)).save(path)
                images.append(load_square(path, size)[0])
            rows.append(
                {
                    "image_id": f"{name}_{i:03d}",
                    "path": path,
                    "diagnosis": name,
                    "label": label,
                    "malignant": int(name in MALIGNANT_CODES),
                    "group_id": f"{name}_lesion{lesion}",
                    "age": float(30 + 5 * (i % 10)),
                    "sex": ("male", "female")[i % 2],
                    "site": ("back", "face", "lower extremity")[i % 3],
                    "dx_type": "histo",
                    "split": split,
                    "source": "real",
                    "cache_index": len(images) - 1,
                }
            )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest.to_csv(root / "manifest.csv", index=False)
    np.save(root / "images.npy", np.stack(images))
    info = {
        "class_names": list(classes),
        "malignant_classes": [c for c in classes if c in MALIGNANT_CODES],
        "image_size": size,
    }
    (root / "info.json").write_text(json.dumps(info))
    return root


def add_synthetic(run_dir: str | Path, n_per_class: int, seed: int = 1) -> Path:
    """Write `<run_dir>/data/synthetic/` (manifest.csv + images.npy): `n_per_class` generated
    train images per class of an existing tiny prepared dataset, labelled by their class."""
    root = data_dir(run_dir)
    info = json.loads((root / "info.json").read_text())
    classes, size = info["class_names"], int(info["image_size"])
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for label, name in enumerate(classes):
        for i in range(n_per_class):
            image_id = f"synth_{name}_{i:03d}"
            rows.append(
                {
                    "image_id": image_id,
                    "path": "",
                    "diagnosis": name,
                    "label": label,
                    "malignant": int(name in MALIGNANT_CODES),
                    "group_id": image_id,
                    "age": float("nan"),
                    "sex": "",
                    "site": "",
                    "dx_type": "synthetic",
                    "split": "train",
                    "source": "synthetic",
                    "cache_index": len(images),
                }
            )
            images.append(class_image(rng, label, size))
    (root / "synthetic").mkdir(exist_ok=True)
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(
        root / "synthetic" / "manifest.csv", index=False
    )
    np.save(root / "synthetic" / "images.npy", np.stack(images))
    return root / "synthetic"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny models run faster on one thread, and far faster on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_baseline_overrides(max_steps: int, *extra: str) -> list[str]:
    """Config overrides for a resnet10t baseline that trains in seconds on `make_prepared` data."""
    return [
        "baseline.model=resnet10t",
        f"baseline.train.max_steps={max_steps}",
        "baseline.train.batch_size=16",
        "baseline.train.lr=0.01",
        *extra,
    ]
