"""Small helpers shared by the synth modules: paths, conditioning classes, hashing, grids."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.utils import make_grid

from dermae.data.prepared import PreparedData

SYNTH_DIR = "synth"
VAE_DIR = "vae"
UNET_DIR = "unet"
SCHEDULER_DIR = "scheduler"
UNET_META = "dermae_synth.json"
MALIGNANT_NAMES = ("benign", "malignant")
CONDITIONINGS = ("diagnosis", "malignant")


def synth_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SYNTH_DIR


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def norm_groups(channels: tuple[int, ...] | list[int], preferred: int = 32) -> int:
    """Largest GroupNorm group count <= `preferred` that divides every channel width."""
    return math.gcd(preferred, *channels)


# ----------------------------------------------------------------------------- conditioning


def conditioning_classes(data: PreparedData, conditioning: str) -> list[str]:
    """Class names the generator is conditioned on, in id order."""
    if conditioning == "malignant":
        return list(MALIGNANT_NAMES)
    if conditioning != "diagnosis":
        raise ValueError(f"ldm.conditioning '{conditioning}' unknown; use one of {CONDITIONINGS}")
    diagnoses = set(data.manifest.loc[data.manifest["source"] == "real", "diagnosis"].astype(str))
    if diagnoses <= set(data.class_names):
        return list(data.class_names)
    # class_names may be binary (data.label=malignant): fall back to the diagnoses present.
    return sorted(diagnoses)


def conditioning_ids(rows: pd.DataFrame, conditioning: str, classes: list[str]) -> np.ndarray:
    """Conditioning class id of each row (int64)."""
    if conditioning == "malignant":
        return rows["malignant"].to_numpy(dtype=np.int64)
    index = {name: i for i, name in enumerate(classes)}
    diagnoses = rows["diagnosis"].astype(str)
    unknown = sorted(set(diagnoses) - set(index))
    if unknown:
        raise ValueError(
            f"diagnosis '{unknown[0]}' is not among the generator's classes {classes}: "
            "re-train the generator on this prepared dataset"
        )
    return diagnoses.map(index).to_numpy(dtype=np.int64)


def class_of_rows(rows: pd.DataFrame, conditioning: str) -> pd.Series:
    """Conditioning class name of each row."""
    if conditioning == "malignant":
        return rows["malignant"].astype(int).map(dict(enumerate(MALIGNANT_NAMES)))
    return rows["diagnosis"].astype(str)


# ----------------------------------------------------------------------------- files


def file_digest(*paths: Path, length: int = 12) -> str:
    """Short sha256 over the bytes of several files (a model id)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:length]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] float in [0, 1] -> uint8 [N, H, W, 3]."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 [H, W, 3] PNG atomically (temp name, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stack rows of uint8 images ([n_i, H, W, 3] each) into one padded white grid.

    torchvision's make_grid lays it out; short rows are filled with white cells first.
    """
    cols = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    cells = [np.concatenate([r, np.full((cols - len(r), h, w, 3), 255, np.uint8)]) for r in rows]
    batch = torch.from_numpy(np.concatenate(cells)).permute(0, 3, 1, 2)
    grid = make_grid(batch, nrow=cols, padding=pad, pad_value=255)
    return grid.permute(1, 2, 0).numpy()
