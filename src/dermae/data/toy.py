"""Tiny generated dermoscopy-like datasets in every supported layout (tests and smoke runs).

Each class draws a disk of its own colour on a skin-toned background, so the classes can be
learnt by a tiny model in a few steps; lesions get 1-3 images (jittered copies) so lesion
grouping matters, as in HAM10000.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dermae.data.classes import HAM10000_CLASSES, MALIGNANT_CODES

TOY_LAYOUTS = ("ham10000", "ham10000_original", "isic", "folders")


def toy_image(class_index: int, num_classes: int, rng: np.random.Generator, size=(40, 30)):
    """uint8 [H, W, 3]: a class-coloured disk, position and noise drawn from `rng`."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    skin = np.array([224, 172, 150], dtype=np.float64)
    hue = class_index / max(num_classes, 1)
    lesion = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.55)) * 255
    cy, cx = height / 2 + rng.normal(0, height / 12), width / 2 + rng.normal(0, width / 12)
    radius = min(width, height) * rng.uniform(0.22, 0.38)
    inside = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    image = np.where(inside[..., None], lesion, skin) + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_toy_dataset(
    root: str | Path,
    layout: str = "ham10000",
    classes: Sequence[str] = HAM10000_CLASSES,
    lesions_per_class: int | Sequence[int] = 4,
    max_images_per_lesion: int = 2,
    size: tuple[int, int] = (40, 30),
    fmt: str = "jpg",
    seed: int = 0,
) -> pd.DataFrame:
    """Write a dataset under `root`; returns the truth table (image_id, diagnosis, lesion_id,
    malignant, age, sex, site, dx_type, file) with `file` relative to `root`."""
    if layout not in TOY_LAYOUTS:
        raise ValueError(f"unknown toy layout '{layout}'; use one of {TOY_LAYOUTS}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_class = (
        [lesions_per_class] * len(classes)
        if isinstance(lesions_per_class, int)
        else list(lesions_per_class)
    )
    sites = ["back", "face", "trunk", "lower extremity"]
    records = []
    n_image = 0
    for k, (name, n_lesions) in enumerate(zip(classes, per_class, strict=True)):
        for _ in range(n_lesions):
            lesion_id = f"HAM_{len(records) + 1000:07d}"
            age = float(rng.integers(2, 17) * 5)
            sex = str(rng.choice(["male", "female"]))
            site = str(rng.choice(sites))
            for _ in range(int(rng.integers(1, max_images_per_lesion + 1))):
                image_id = f"ISIC_{n_image:07d}"
                n_image += 1
                if layout == "folders":
                    rel = Path(name) / f"{image_id}.{fmt}"
                elif layout == "ham10000_original":
                    part = 1 if n_image % 2 else 2
                    rel = Path(f"HAM10000_images_part_{part}") / f"{image_id}.{fmt}"
                elif layout == "isic":
                    rel = Path("ISIC2018_Task3_Training_Input") / f"{image_id}.{fmt}"
                else:
                    rel = Path("images") / f"{image_id}.{fmt}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(toy_image(k, len(classes), rng, size)).save(root / rel)
                records.append(
                    {
                        "image_id": image_id,
                        "diagnosis": name,
                        "lesion_id": lesion_id,
                        "malignant": int(name in MALIGNANT_CODES),
                        "age": age,
                        "sex": sex,
                        "site": site,
                        "dx_type": "histo",
                        "file": rel.as_posix(),
                    }
                )
    truth = pd.DataFrame(records)
    if layout == "ham10000":
        truth.to_csv(root / "labels.csv", index=False)
    elif layout == "ham10000_original":
        original = truth.rename(columns={"diagnosis": "dx", "site": "localization"})
        original = original[
            ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
        ]
        original.to_csv(root / "HAM10000_metadata.csv", index=False)
    elif layout == "isic":
        onehot = pd.DataFrame({"image": truth["image_id"]})
        for name in classes:
            onehot[name.upper()] = (truth["diagnosis"] == name).astype(float)
        onehot.to_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    return truth
