"""Read a prepared dataset (see `dermae data prepare`) and serve it as torch Datasets.

Layout of `<run_dir>/data/`:
    manifest.csv   one row per real image: image_id, path, diagnosis, label, malignant,
                   group_id, age, sex, site, dx_type, split, source, cache_index
    images.npy     uint8 [N, S, S, 3], memory-mapped; row `cache_index` of manifest.csv
    info.json      class_names, malignant_classes, image_size, counts, skipped
    synthetic/manifest.csv + synthetic/images.npy   (written by `dermae synth sample`;
                   same columns plus seed, guidance, steps, model_id; split=train,
                   source=synthetic)
    images_<S>px.npy   the real images again at another size S, made on first use
                   (`PreparedData.at_size`) for a model trained or evaluated at S (a teacher
                   at twice the student's resolution); row i = the i-th real cache_index
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from dermae.data.cache import build_image_cache
from dermae.data.errors import DataError
from dermae.data.transforms import to_resolution

MANIFEST_COLUMNS = [
    "image_id",
    "path",
    "diagnosis",
    "label",
    "malignant",
    "group_id",
    "age",
    "sex",
    "site",
    "dx_type",
    "split",
    "source",
    "cache_index",
]
SPLITS = ("train", "val", "test")


def data_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "data"


@dataclass
class PreparedData:
    root: Path
    manifest: pd.DataFrame  # real rows, then synthetic rows (if loaded)
    arrays: dict[str, np.ndarray]  # source -> uint8 [N, S, S, 3]
    class_names: list[str]
    malignant_classes: list[str]
    image_size: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def malignant_index(self) -> list[int]:
        return [i for i, c in enumerate(self.class_names) if c in self.malignant_classes]

    def rows(
        self,
        split: str,
        include_synthetic: bool = False,
        synthetic_ratio: float = 1.0,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Rows of one split; synthetic rows (train only) optionally mixed in."""
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; use one of {SPLITS}")
        real = self.manifest[
            (self.manifest["source"] == "real") & (self.manifest["split"] == split)
        ]
        if not include_synthetic or split != "train":
            return real
        synth = self.manifest[self.manifest["source"] == "synthetic"]
        if synthetic_ratio < 1.0 and len(synth):
            synth = synth.sample(frac=synthetic_ratio, random_state=seed)
        return pd.concat([real, synth])

    def dataset(
        self, rows: pd.DataFrame, transform=None, view_size: int | None = None
    ) -> LesionDataset:
        """`rows` as a Dataset; `view_size` (> image_size) adds "teacher_image": the same
        augmented view at that resolution (see `LesionDataset`)."""
        if view_size is None or view_size == self.image_size:
            return LesionDataset(rows, self.arrays, transform)
        if view_size < self.image_size:
            raise ValueError(
                f"a teacher view of {view_size} px is smaller than the {self.image_size}-px "
                "images; a smaller teacher resizes the student's view itself"
            )
        larger = self.at_size(view_size)
        index = np.full(len(rows), -1, dtype=np.int64)  # -1: no larger image (synthetic)
        real = (rows["source"] == "real").to_numpy()
        index[real] = self._real_order().searchsorted(rows["cache_index"].to_numpy()[real])
        return LesionDataset(
            rows, self.arrays, transform, (view_size, larger.arrays["real"], index)
        )

    def _real_order(self) -> np.ndarray:
        real = self.manifest[self.manifest["source"] == "real"]
        return np.unique(real["cache_index"].to_numpy(dtype=np.int64))

    def at_size(self, size: int, progress: bool = True) -> PreparedData:
        """The real rows with their images at `size` px, cached as `images_<size>px.npy` from
        the same source files (made once, reused while they are unchanged). Synthetic images
        exist only at the generator's size, so they are not part of it."""
        if size == self.image_size:
            return self
        real = self.manifest[self.manifest["source"] == "real"]
        order = self._real_order()
        paths = real.drop_duplicates("cache_index").set_index("cache_index")["path"]
        out = self.root / f"images_{size}px.npy"
        report = build_image_cache([paths[i] for i in order], size, out, progress)
        if report.failures:
            first = next(iter(report.failures.values()))
            raise DataError(
                f"{len(report.failures)} images of {self.root / 'manifest.csv'} could not be "
                f"read again to cache them at {size} px (first: {first}); restore the source "
                f"files or rerun `dermae data prepare -c CONFIG`"
            )
        manifest = real.assign(cache_index=order.searchsorted(real["cache_index"].to_numpy()))
        return dataclasses.replace(
            self,
            manifest=manifest,
            arrays={"real": _open_images(out, "dermae data prepare -c CONFIG")},
            image_size=size,
        )


def _open_images(path: Path, remedy: str) -> np.ndarray:
    """Memory-map an image array; a truncated or damaged file is a clear error, not an mmap
    traceback in the middle of training."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path} is damaged or truncated ({err}): delete it and rerun `{remedy}`"
        ) from err


ACCEPTED_FILE = "accepted.csv"  # data/synthetic/: the synthetic-image filter's verdicts


def accepted_synthetic(root: Path, synth: pd.DataFrame) -> pd.DataFrame:
    """Synthetic rows the filter kept (`dermae synth evaluate` with sample.filter=classifier).

    Without a verdict file every row is kept. A row the verdict file does not know (sampled
    after the filter ran) is an error, not a silent keep or drop.
    """
    path = root / "synthetic" / ACCEPTED_FILE
    if not path.exists():
        return synth
    verdicts = pd.read_csv(path, dtype={"image_id": str}).set_index("image_id")["accepted"]
    unknown = ~synth["image_id"].isin(verdicts.index)
    if unknown.any():
        raise ValueError(
            f"{path} has no verdict for {int(unknown.sum())} synthetic images (e.g. "
            f"{synth.loc[unknown, 'image_id'].iloc[0]}): rerun `dermae synth evaluate`"
        )
    return synth[synth["image_id"].map(verdicts).astype(bool).to_numpy()]


REPREPARE = "delete the folder and rerun `dermae data prepare -c CONFIG`"


def _check_consistent(
    root: Path, manifest: pd.DataFrame, images: np.ndarray, info: dict[str, Any]
) -> None:
    """manifest.csv, info.json and images.npy must describe the same images: a file replaced
    or cut short on its own would otherwise feed wrong pixels or fail deep inside training."""
    size = int(info["image_size"])
    n_rows = info.get("n_images")  # written by prepare (older or hand-made folders lack it)
    problem = ""
    if n_rows is not None and len(manifest) != n_rows:
        problem = f"manifest.csv has {len(manifest)} rows, info.json says {n_rows}"
    elif images.ndim != 4 or images.shape[1:] != (size, size, 3):
        problem = f"images.npy holds {images.shape}, info.json says {size} px RGB"
    elif len(manifest) and int(manifest["cache_index"].max()) >= len(images):
        problem = (
            f"manifest.csv refers to image {int(manifest['cache_index'].max())}, "
            f"images.npy holds {len(images)}"
        )
    if problem:
        raise DataError(f"{root} is inconsistent ({problem}): {REPREPARE}")


def load_prepared(
    run_dir: str | Path, with_synthetic: bool = True, filtered: bool = True
) -> PreparedData:
    """The prepared data; `filtered=False` keeps synthetic images the filter rejected."""
    root = data_dir(run_dir)
    info_path = root / "info.json"
    if not info_path.exists():
        raise FileNotFoundError(
            f"{info_path} not found: run `dermae data prepare -c CONFIG` first (run_dir={run_dir})"
        )
    info = json.loads(info_path.read_text())
    try:
        manifest = pd.read_csv(root / "manifest.csv", dtype={"image_id": str, "group_id": str})
    except (OSError, ValueError) as err:  # pandas' parser errors are ValueErrors
        raise DataError(f"{root / 'manifest.csv'} cannot be read ({err}); {REPREPARE}") from err
    arrays = {"real": _open_images(root / "images.npy", "dermae data prepare -c CONFIG")}
    _check_consistent(root, manifest, arrays["real"], info)
    synth_manifest = root / "synthetic" / "manifest.csv"
    synth_images = root / "synthetic" / "images.npy"
    if with_synthetic and synth_manifest.exists() and synth_images.exists():
        synth = pd.read_csv(synth_manifest, dtype={"image_id": str, "group_id": str})
        arrays["synthetic"] = _open_images(synth_images, "dermae synth sample -c CONFIG")
        if filtered:
            synth = accepted_synthetic(root, synth)
        manifest = pd.concat([manifest, synth], ignore_index=True)
    return PreparedData(
        root=root,
        manifest=manifest,
        arrays=arrays,
        class_names=list(info["class_names"]),
        malignant_classes=list(info["malignant_classes"]),
        image_size=int(info["image_size"]),
    )


# Row columns that define a training example (synthetic ones: which generator and seed).
FINGERPRINT_COLUMNS = ("image_id", "source", "split", "label", "group_id", "model_id", "seed")


class LesionDataset(Dataset):
    """Yields {"image": float [3, S, S] in [0, 1], "label", "malignant", "index", "synthetic"}.

    `view` = (size, images, index) adds "teacher_image" [3, size, size]: row i's image
    `images[index[i]]`, augmented with the very same draw as "image" (flip, rotation, colour),
    so a teacher at a higher resolution sees the student's view with more pixels. Rows with
    index -1 (synthetic images, made at S only) get the augmented "image" resized to `size`.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        arrays: dict[str, np.ndarray],
        transform=None,
        view: tuple[int, np.ndarray, np.ndarray] | None = None,
    ):
        self.rows = rows.reset_index(drop=True)
        self.arrays = arrays
        self.transform = transform
        self.view = view
        self._source = self.rows["source"].to_numpy()
        self._cache_index = self.rows["cache_index"].to_numpy(dtype=np.int64)
        self.labels = self.rows["label"].to_numpy(dtype=np.int64)
        self.malignant = self.rows["malignant"].to_numpy(dtype=np.int64)
        self.synthetic = self._source == "synthetic"

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> str:
        """Hash of which images (and synthetic generator), with which labels and split, at
        which cache size: the training loop resumes only onto a checkpoint made from these."""
        cols = [c for c in FINGERPRINT_COLUMNS if c in self.rows.columns]
        h = hashlib.sha256(pd.util.hash_pandas_object(self.rows[cols], index=False).to_numpy())
        shapes = {k: list(v.shape) for k, v in sorted(self.arrays.items())}
        view = None if self.view is None else list(self.view[1].shape)
        h.update(json.dumps([cols, shapes] + ([view] if view else [])).encode())
        return h.hexdigest()[:16]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pixels = self.arrays[self._source[i]][self._cache_index[i]]  # [S, S, 3] uint8
        image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # copy: the cache is read-only
        larger = None
        if self.view is not None and self.view[2][i] >= 0:
            larger = torch.from_numpy(np.array(self.view[1][self.view[2][i]])).permute(2, 0, 1)
        if self.transform is not None and larger is not None:
            # Two tv_tensors in one call: one draw of every random parameter for both.
            image, larger = self.transform(tv_tensors.Image(image), tv_tensors.Image(larger))
            image, larger = image.as_subclass(torch.Tensor), larger.as_subclass(torch.Tensor)
        elif self.transform is not None:
            image = self.transform(image)
        item = {
            "image": image.float().div_(255.0),
            "label": torch.tensor(self.labels[i]),
            "malignant": torch.tensor(self.malignant[i]),
            "index": torch.tensor(i),
            "synthetic": torch.tensor(self.synthetic[i]),
        }
        if self.view is not None:
            size = self.view[0]
            item["teacher_image"] = (
                larger.float().div_(255.0)
                if larger is not None
                else to_resolution(item["image"][None], size)[0]
            )
        return item
