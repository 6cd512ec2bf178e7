"""Ingest and the prepared data never pass bad input silently: blank lesion ids, paths outside
the data root, problems reported in one pass, damaged caches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermae.config import DataConfig
from dermae.data.cache import check_cache_file
from dermae.data.errors import DataError
from dermae.data.ingest import ingest_dataset
from dermae.data.prepare import prepare_dataset
from dermae.data.prepared import load_prepared
from dermae.data.toy import write_toy_dataset
from tests.reliability.common import prepare_args, rewrite_labels

# ----------------------------------------------------------------------------- lesion ids


def _blank_lesions(root: Path, rows: list[int]) -> list[str]:
    """Blank the lesion_id of these 0-based rows; returns their image ids."""
    ids: list[str] = []

    def edit(table: pd.DataFrame) -> None:
        ids.extend(table.loc[rows, "image_id"])
        table.loc[rows, "lesion_id"] = ""

    rewrite_labels(root, edit)
    return ids


def test_blank_lesion_id_stops_prepare_naming_the_rows(cli, toy, tmp_path: Path) -> None:
    root, _ = toy
    ids = _blank_lesions(root, [3, 10])
    result = cli(*prepare_args(root, tmp_path / "run"))
    assert result.code == 2
    assert "2 problem(s)" in result.err
    for line, image_id in zip((5, 12), ids, strict=True):  # header is line 1
        assert f"line {line}: {root / 'labels.csv'}: {image_id}: no lesion_id" in result.err
    assert "data.group_missing_lesions=image" in result.err
    assert not (tmp_path / "run" / "data" / "info.json").exists()


def test_opt_in_groups_blank_lesions_by_image_and_says_so(cli, toy, tmp_path: Path) -> None:
    root, truth = toy
    ids = _blank_lesions(root, [3, 10])
    run = tmp_path / "run"
    result = cli(*prepare_args(root, run, "data.group_missing_lesions=image"))
    assert result.code == 0, result.err
    assert "data: note: labels.csv: 2 row(s) have no lesion_id" in result.out
    info = json.loads((run / "data" / "info.json").read_text())
    assert info["missing_lesion_ids"] == 2
    assert any("2 row(s) have no lesion_id" in n for n in info["notes"])
    manifest = pd.read_csv(run / "data" / "manifest.csv", dtype=str).set_index("image_id")
    assert [manifest.at[i, "group_id"] for i in ids] == ids  # each its own lesion
    assert len(manifest) == len(truth)


def test_skip_bad_drops_rows_without_lesion_id(cli, toy, tmp_path: Path) -> None:
    root, truth = toy
    ids = _blank_lesions(root, [0])
    run = tmp_path / "run"
    assert cli(*prepare_args(root, run, "data.skip_bad=true")).code == 0
    skipped = pd.read_csv(run / "data" / "skipped.csv")
    assert skipped["row"].tolist() == [2] and "no lesion_id" in skipped["reason"][0]
    manifest = pd.read_csv(run / "data" / "manifest.csv", dtype=str)
    assert ids[0] not in set(manifest["image_id"]) and len(manifest) == len(truth) - 1


def test_isic_blank_lesion_id_is_an_error_too(tmp_path: Path) -> None:
    truth = write_toy_dataset(tmp_path, "isic", lesions_per_class=2)
    gt = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"
    table = pd.read_csv(gt, dtype=str)
    table["lesion_id"] = list(truth["lesion_id"])
    table.loc[1, "lesion_id"] = ""
    table.to_csv(gt, index=False)
    with pytest.raises(DataError, match="line 3: .*no lesion_id"):
        ingest_dataset(tmp_path)
    result = ingest_dataset(tmp_path, missing_lesions="image")
    assert result.missing_lesions == 1
    assert (result.rows["group_id"] == result.rows["image_id"]).sum() == 1


# ----------------------------------------------------------------------------- data root


def _outside_image(tmp_path: Path) -> Path:
    outside = tmp_path / "outside" / "x.jpg"
    outside.parent.mkdir()
    Image.new("RGB", (40, 30), (120, 60, 40)).save(outside)
    return outside


def test_relative_path_escaping_the_root_is_refused(cli, toy, tmp_path: Path) -> None:
    root, truth = toy
    outside = _outside_image(tmp_path)
    (root / truth["file"][2]).unlink()

    def edit(table: pd.DataFrame) -> None:
        table.loc[2, "file"] = "../outside/x.jpg"

    rewrite_labels(root, edit)
    result = cli(*prepare_args(root, tmp_path / "run"))
    assert result.code == 2
    assert (
        f"line 4: {root / 'labels.csv'}: '../outside/x.jpg' resolves to {outside}, outside the "
        f"data root {root}" in result.err
    )
    assert "data.allow_outside_root=true" in result.err

    run = tmp_path / "run2"
    result = cli(*prepare_args(root, run, "data.allow_outside_root=true"))
    assert result.code == 0, result.err
    manifest = pd.read_csv(run / "data" / "manifest.csv", dtype=str).set_index("image_id")
    assert manifest.at[truth["image_id"][2], "path"] == str(outside)


def test_symlink_pointing_outside_the_root_is_refused(toy, tmp_path: Path) -> None:
    root, truth = toy
    outside = _outside_image(tmp_path)
    link = root / truth["file"][5]
    link.unlink()
    os.symlink(outside, link)  # found by image id, and named in the file column
    with pytest.raises(DataError) as err:
        ingest_dataset(root)
    assert f"line 7: {root / 'labels.csv'}: '{truth['file'][5]}' resolves to {outside}" in str(
        err.value
    )
    rewrite_labels(root, lambda t: t.drop(columns="file", inplace=True))
    with pytest.raises(DataError, match=f"resolves to {outside}, outside the data root"):
        ingest_dataset(root)  # found by image id only
    assert len(ingest_dataset(root, allow_outside_root=True).rows) == len(truth)


def test_symlink_inside_the_root_is_fine(toy) -> None:
    root, truth = toy
    target = root / truth["file"][0]
    moved = root / "store" / target.name
    moved.parent.mkdir()
    target.rename(moved)
    os.symlink(moved, target)
    rows = ingest_dataset(root).rows.set_index("image_id")
    assert rows.at[truth["image_id"][0], "path"] == str(moved)


def test_class_folder_symlink_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "folders"
    write_toy_dataset(root, "folders", classes=["mel", "nv"], lesions_per_class=2)
    outside = _outside_image(tmp_path)
    os.symlink(outside, root / "mel" / "extra.jpg")
    with pytest.raises(DataError, match=f"resolves to {outside}, outside the data root"):
        ingest_dataset(root)


# ----------------------------------------------------------------------------- one pass


def test_csv_and_decode_problems_come_in_one_pass(cli, toy, tmp_path: Path) -> None:
    root, truth = toy
    broken = root / truth["file"][6]
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated JPEG: only decoding tells

    def edit(table: pd.DataFrame) -> None:
        table.loc[1, "diagnosis"] = "melanomaa"

    rewrite_labels(root, edit)
    run = tmp_path / "run"
    result = cli(*prepare_args(root, run))
    assert result.code == 2
    assert "2 problem(s)" in result.err
    assert f"line 3: {root / 'labels.csv'}: unknown diagnosis 'melanomaa'" in result.err
    assert f"line 8: {broken.resolve()}: cannot decode image" in result.err

    assert cli(*prepare_args(root, run, "data.skip_bad=true")).code == 0
    skipped = pd.read_csv(run / "data" / "skipped.csv")
    assert skipped["row"].tolist() == [3, 8]  # the decode failure names its CSV line
    assert skipped["file"].tolist() == [str(root / "labels.csv"), str(broken.resolve())]
    assert skipped["reason"][1].startswith("cannot decode image")


# ----------------------------------------------------------------------------- damaged cache


def test_truncated_cache_is_rebuilt_not_reported_up_to_date(
    cli, toy, tmp_path: Path, capsys
) -> None:
    root, _ = toy
    run = tmp_path / "run"
    assert cli(*prepare_args(root, run)).code == 0
    images = run / "data" / "images.npy"
    whole = images.read_bytes()
    images.write_bytes(whole[: len(whole) // 2])
    assert "bytes on disk" in check_cache_file(images)

    result = cli(*prepare_args(root, run))
    assert result.code == 0
    assert "up to date" not in result.out and "done earlier" not in result.out
    assert f"data: {images} is damaged" in result.out and "rebuilding it" in result.out
    assert images.read_bytes() == whole
    assert check_cache_file(images) == ""

    # The library call checks too (not only the pipeline's record of the stage's files).
    images.write_bytes(whole[:-1])
    data = prepare_dataset(DataConfig(root=str(root), image_size=16), run, progress=False)
    assert "is damaged" in capsys.readouterr().out
    assert images.read_bytes() == whole and data.arrays["real"].shape[1:] == (16, 16, 3)


def test_cache_header_for_another_shape_is_damage(cli, toy, tmp_path: Path) -> None:
    root, truth = toy
    run = tmp_path / "run"
    assert cli(*prepare_args(root, run)).code == 0
    images = run / "data" / "images.npy"
    np.save(images, np.zeros((len(truth), 8, 8, 3), np.uint8))  # whole, but not 16 px
    assert "header says uint8" in check_cache_file(images)
    result = cli(*prepare_args(root, run))
    assert result.code == 0 and "is damaged" in result.out
    assert np.load(images).shape == (len(truth), 16, 16, 3)


def test_missing_cache_record_is_damage(tmp_path: Path) -> None:
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((2, 8, 8, 3), np.uint8))
    assert "images.cache.json is missing" in check_cache_file(images)


def test_loading_a_truncated_cache_says_what_to_do(toy, tmp_path: Path, cli) -> None:
    root, _ = toy
    run = tmp_path / "run"
    assert cli(*prepare_args(root, run)).code == 0
    images = run / "data" / "images.npy"
    images.write_bytes(images.read_bytes()[:500])
    with pytest.raises(DataError) as err:
        load_prepared(run)
    message = str(err.value)
    assert str(images) in message and "delete it and rerun `dermae data prepare" in message


def test_prepared_files_that_disagree_are_named(toy, tmp_path: Path, cli) -> None:
    root, truth = toy
    run = tmp_path / "run"
    assert cli(*prepare_args(root, run)).code == 0
    data = run / "data"
    manifest = (data / "manifest.csv").read_text()
    (data / "manifest.csv").write_text("".join(manifest.splitlines(keepends=True)[:-3]))
    with pytest.raises(DataError, match=f"manifest.csv has {len(truth) - 3} rows, info.json says"):
        load_prepared(run)
    (data / "manifest.csv").write_text("")
    with pytest.raises(DataError, match="manifest.csv cannot be read"):
        load_prepared(run)
    (data / "manifest.csv").write_text(manifest)
    np.save(data / "images.npy", np.zeros((len(truth), 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"images.npy holds \(\d+, 8, 8, 3\), info.json says 16 px"):
        load_prepared(run)
    np.save(data / "images.npy", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(DataError, match="images.npy holds 2") as err:
        load_prepared(run)
    assert "rerun `dermae data prepare" in str(err.value)
