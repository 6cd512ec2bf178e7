"""A tiny prepared dataset (7 classes, optional synthetic rows) for the MAE / fine-tune tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MALIGNANT = ["akiec", "bcc", "mel"]


def write_prepared(
    run_dir: Path,
    size: int = 16,
    per_split: dict[str, int] | None = None,
    synthetic: int = 0,
    seed: int = 0,
) -> Path:
    """A prepared dataset under run_dir/data; class c has a bright blob in a class-specific place."""
    per_split = per_split or {"train": 28, "val": 14, "test": 14}
    rng = np.random.default_rng(seed)

    def images_for(labels: np.ndarray) -> np.ndarray:
        imgs = rng.integers(0, 60, size=(len(labels), size, size, 3), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 3)
            h = size // 3
            imgs[i, r * h : (r + 1) * h, q * h : (q + 1) * h, :] += 180
        return imgs

    def manifest(labels, split, source, start):
        return pd.DataFrame(
            {
                "image_id": [f"{source}_{split}_{i}" for i in range(len(labels))],
                "path": "",
                "diagnosis": [CLASSES[c] for c in labels],
                "label": labels,
                "malignant": [int(CLASSES[c] in MALIGNANT) for c in labels],
                "group_id": [f"{source}_{split}_{i}" for i in range(len(labels))],
                "age": 50.0,
                "sex": "male",
                "site": "back",
                "dx_type": "histo",
                "split": split,
                "source": source,
                "cache_index": np.arange(start, start + len(labels)),
            }
        )

    root = Path(run_dir) / "data"
    root.mkdir(parents=True, exist_ok=True)
    frames, arrays, start = [], [], 0
    for split, n in per_split.items():
        labels = np.arange(n) % len(CLASSES)
        frames.append(manifest(labels, split, "real", start))
        arrays.append(images_for(labels))
        start += n
    pd.concat(frames).to_csv(root / "manifest.csv", index=False)
    np.save(root / "images.npy", np.concatenate(arrays))
    if synthetic:
        labels = np.arange(synthetic) % len(CLASSES)
        (root / "synthetic").mkdir(exist_ok=True)
        manifest(labels, "train", "synthetic", 0).to_csv(
            root / "synthetic" / "manifest.csv", index=False
        )
        np.save(root / "synthetic" / "images.npy", images_for(labels))
    info = {
        "class_names": CLASSES,
        "malignant_classes": MALIGNANT,
        "image_size": size,
        "counts": {},
        "skipped": [],
    }
    (root / "info.json").write_text(json.dumps(info))
    return Path(run_dir)
