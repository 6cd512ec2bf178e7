"""`prepare_dataset`: files that agree with each other, idempotence, bad input, real data."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dermae.data.prepare as prepare_module
from dermae.config import Config, DataConfig, default_data_root
from dermae.data.cache import load_square
from dermae.data.classes import HAM10000_CLASSES
from dermae.data.errors import DataError
from dermae.data.prepare import is_prepared, prepare_dataset, prepare_external, prepare_stage
from dermae.data.prepared import MANIFEST_COLUMNS, load_prepared
from dermae.data.toy import write_toy_dataset


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    root = tmp_path / "ham"
    return root, write_toy_dataset(root, "ham10000", lesions_per_class=5, seed=1)


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), image_size=kw.pop("image_size", 16), **kw)


def test_prepare_writes_consistent_files(toy, tmp_path: Path, capsys) -> None:
    root, truth = toy
    run = tmp_path / "run"
    data = prepare_dataset(_cfg(root), run, progress=False)
    manifest = pd.read_csv(run / "data" / "manifest.csv", dtype={"group_id": str})
    info = json.loads((run / "data" / "info.json").read_text())
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert data.class_names == list(HAM10000_CLASSES) == info["class_names"]
    assert data.malignant_classes == ["akiec", "bcc", "mel"]
    assert sorted(manifest["image_id"]) == sorted(truth["image_id"])
    # Labels index class_names; malignant follows the diagnosis.
    assert (manifest["label"] == manifest["diagnosis"].map(HAM10000_CLASSES.index)).all()
    assert (manifest["malignant"] == manifest["diagnosis"].isin(["akiec", "bcc", "mel"])).all()
    # Lesion grouping and every class in every split (5 lesions per class -> 3/1/1).
    assert manifest.groupby("group_id")["split"].nunique().max() == 1
    lesions = manifest.drop_duplicates("group_id")
    assert (
        pd.crosstab(lesions["diagnosis"], lesions["split"])[["train", "val", "test"]].values
        == [3, 1, 1]
    ).all()
    # Counts in info.json agree with the manifest and add up.
    counts = pd.crosstab(manifest["split"], manifest["diagnosis"])
    for split, row in info["counts"].items():
        assert row == {c: int(counts.at[split, c]) for c in HAM10000_CLASSES}
    assert sum(sum(r.values()) for r in info["counts"].values()) == len(truth) == info["n_images"]
    assert info["n_groups"] == truth["lesion_id"].nunique() == 35
    assert info["skipped"] == 0 and info["converted"] == {} and info["layout"] == "ham10000"
    # Each cache row is the resized image of its manifest row.
    images = np.load(run / "data" / "images.npy")
    for _, row in manifest.sample(5, random_state=0).iterrows():
        np.testing.assert_array_equal(images[row["cache_index"]], load_square(row["path"], 16)[0])
    # The torch dataset serves the same pixels and labels.
    test_rows = data.rows("test")
    item = data.dataset(test_rows)[0]
    first = test_rows.iloc[0]
    assert item["image"].shape == (3, 16, 16) and int(item["label"]) == first["label"]
    expected = images[first["cache_index"]].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(item["image"].numpy(), expected, atol=1e-6)
    out = capsys.readouterr().out
    assert "data: 0 images" not in out and f"{len(truth)} images of 35 lesions" in out
    assert "skipped: 0" in out


def test_prepare_is_idempotent_and_reuses_the_cache(toy, tmp_path: Path, monkeypatch) -> None:
    root, _ = toy
    run = tmp_path / "run"
    assert not is_prepared(_cfg(root), run)
    prepare_dataset(_cfg(root), run, progress=False)
    assert is_prepared(_cfg(root, include_synthetic=False), run)
    assert not is_prepared(_cfg(root, image_size=20), run)
    files = {n: (run / "data" / n).read_bytes() for n in ["manifest.csv", "info.json"]}
    mtime = os.stat(run / "data" / "images.npy").st_mtime_ns

    def no_work(*args, **kwargs):
        raise AssertionError("prepare should have skipped its work")

    monkeypatch.setattr(prepare_module, "build_image_cache", no_work)
    again = prepare_dataset(_cfg(root, include_synthetic=False, num_workers=3), run)
    assert {n: (run / "data" / n).read_bytes() for n in files} == files
    assert os.stat(run / "data" / "images.npy").st_mtime_ns == mtime
    assert len(again.manifest) == len(pd.read_csv(run / "data" / "manifest.csv"))
    monkeypatch.undo()

    # Another split seed re-splits but keeps the decoded images.
    reseeded = prepare_dataset(_cfg(root, split_seed=5), run, progress=False)
    info = json.loads((run / "data" / "info.json").read_text())
    assert info["cache"]["reused"] is True
    assert os.stat(run / "data" / "images.npy").st_mtime_ns == mtime
    assert not reseeded.manifest["split"].equals(again.manifest["split"])
    # A changed source file makes it stale again.
    time.sleep(0.01)
    labels = root / "labels.csv"
    labels.write_text(labels.read_text())
    prepare_dataset(_cfg(root, split_seed=5), run, progress=False)
    assert json.loads((run / "data" / "info.json").read_text())["key"] != info["key"]


def test_bad_image_is_named_or_skipped_and_conversions_counted(toy, tmp_path: Path) -> None:
    root, truth = toy
    broken = root / truth["file"][0]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    gray = root / truth["file"][1]
    Image.open(gray).convert("L").save(gray)
    with pytest.raises(DataError) as err:
        prepare_dataset(_cfg(root), tmp_path / "run", progress=False)
    assert str(broken) in str(err.value) and "skip_bad" in str(err.value)
    assert not (tmp_path / "run" / "data" / "info.json").exists()

    data = prepare_dataset(_cfg(root, skip_bad=True), tmp_path / "run", progress=False)
    skipped = pd.read_csv(tmp_path / "run" / "data" / "skipped.csv")
    assert list(skipped.columns) == ["row", "file", "reason"]
    assert skipped["file"].tolist() == [str(broken.resolve())]
    assert "cannot decode image" in skipped["reason"][0]
    info = json.loads((tmp_path / "run" / "data" / "info.json").read_text())
    assert info["skipped"] == 1 and info["converted"] == {"L": 1}
    assert truth["image_id"][0] not in set(data.manifest["image_id"])
    assert len(data.manifest) == len(truth) - 1


def test_skip_bad_writes_ingest_problems_too(toy, tmp_path: Path) -> None:
    root, truth = toy
    (root / truth["file"][3]).unlink()
    data = prepare_dataset(_cfg(root, skip_bad=True), tmp_path / "run", progress=False)
    skipped = pd.read_csv(tmp_path / "run" / "data" / "skipped.csv")
    assert skipped["row"].tolist() == [5]  # line 5 of labels.csv
    assert "image file not found" in skipped["reason"][0]
    assert len(data.manifest) == len(truth) - 1


def test_malignant_label_and_limit(toy, tmp_path: Path) -> None:
    root, truth = toy
    data = prepare_dataset(
        _cfg(root, label="malignant", limit=21), tmp_path / "run", progress=False
    )
    assert data.class_names == ["benign", "malignant"] and data.malignant_index == [1]
    assert (data.manifest["label"] == data.manifest["malignant"]).all()
    assert data.manifest["group_id"].nunique() == 21  # 3 lesions of each of 7 classes
    assert set(data.manifest["diagnosis"]) == set(HAM10000_CLASSES)
    for split in ["train", "val", "test"]:
        assert set(data.rows(split)["diagnosis"]) == set(HAM10000_CLASSES)


def test_changed_config_sets_stale_synthetic_data_aside(toy, tmp_path: Path) -> None:
    root, _ = toy
    run = tmp_path / "run"
    prepare_dataset(_cfg(root), run, progress=False)
    (run / "data" / "synthetic").mkdir()
    (run / "data" / "synthetic" / "manifest.csv").write_text("old")
    prepare_dataset(_cfg(root), run, progress=False)  # same config: left alone
    assert (run / "data" / "synthetic" / "manifest.csv").exists()
    prepare_dataset(_cfg(root, split_seed=1), run, progress=False)
    assert not (run / "data" / "synthetic").exists()
    assert (run / "data" / "synthetic.stale" / "manifest.csv").read_text() == "old"


def test_bad_config_values(toy, tmp_path: Path) -> None:
    root, _ = toy
    with pytest.raises(DataError, match="data.label"):
        prepare_dataset(_cfg(root, label="benign"), tmp_path / "run")
    with pytest.raises(DataError, match="image_size"):
        prepare_dataset(_cfg(root, image_size=4), tmp_path / "run")
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset(_cfg(tmp_path / "missing"), tmp_path / "run")


def test_prepare_stage_and_external_set(toy, tmp_path: Path) -> None:
    root, _ = toy
    run = tmp_path / "run"
    assert prepare_stage(Config(data=_cfg(root, limit=21)), run) == run / "data"
    assert load_prepared(run).manifest["group_id"].nunique() == 21
    # An external ISIC-style set with other classes: all of it is "test", nothing subset.
    ext_root = tmp_path / "isic"
    truth = write_toy_dataset(ext_root, "isic", classes=["mel", "nv", "scc"], lesions_per_class=2)
    ext = prepare_external(_cfg(root, limit=21, image_size=12), ext_root, run / "external" / "x")
    assert ext.class_names == ["mel", "nv", "scc"] and ext.image_size == 12
    assert len(ext.rows("test")) == len(truth) and ext.rows("train").empty
    assert sorted(ext.manifest["image_id"]) == sorted(truth["image_id"])
    info = json.loads((run / "external" / "x" / "data" / "info.json").read_text())
    assert info["external"] is True and info["layout"] == "isic"
    assert load_prepared(run).manifest["group_id"].nunique() == 21  # the run's data untouched


def _real_root() -> Path | None:
    configured = Path(default_data_root())
    here = Path(__file__).resolve().parents[2]
    for candidate in (configured, here / configured):
        if (candidate / "labels.csv").exists() or (candidate / "HAM10000_metadata.csv").exists():
            return candidate
    return None


def test_real_ham10000_small_subset(tmp_path: Path) -> None:
    root = _real_root()
    if root is None:
        pytest.skip(
            f"real HAM10000 not found at {default_data_root()!r}: set DERMAE_DATA to the folder "
            "holding labels.csv and images/"
        )
    data = prepare_dataset(
        DataConfig(root=str(root), image_size=32, limit=60), tmp_path / "run", progress=False
    )
    manifest = data.manifest
    labels = pd.read_csv(root / "labels.csv", dtype=str).set_index("image_id")
    assert manifest["group_id"].nunique() == 60
    # Every image of each kept lesion is there, and lesions never cross splits.
    kept = labels[labels["lesion_id"].isin(set(manifest["group_id"]))]
    assert sorted(kept.index) == sorted(manifest["image_id"])
    assert (labels.loc[manifest["image_id"], "lesion_id"].values == manifest["group_id"]).all()
    assert manifest.groupby("group_id")["split"].nunique().max() == 1
    assert set(manifest["diagnosis"]) == set(HAM10000_CLASSES)
    info = json.loads((tmp_path / "run" / "data" / "info.json").read_text())
    assert sum(sum(r.values()) for r in info["counts"].values()) == len(manifest)
    assert info["converted"] == {} and info["skipped"] == 0
    images = load_prepared(tmp_path / "run").arrays["real"]
    assert images.shape == (len(manifest), 32, 32, 3) and images.max() > 0
