"""Ingest: three layouts give the same rows; every kind of bad input is named, or skipped."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermae.data.classes import HAM10000_CLASSES
from dermae.data.errors import DataError
from dermae.data.ingest import ROW_COLUMNS, detect_layout, ingest_dataset
from dermae.data.toy import write_toy_dataset

SMALL = dict(lesions_per_class=2, max_images_per_lesion=2, seed=3)


@pytest.fixture
def ham(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    truth = write_toy_dataset(tmp_path / "ham", "ham10000", **SMALL)
    return tmp_path / "ham", truth


def _by_id(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.set_index("image_id").sort_index()


@pytest.mark.parametrize("layout", ["ham10000", "ham10000_original", "isic", "folders"])
def test_every_layout_ingests_the_same_values(tmp_path: Path, layout: str) -> None:
    root = tmp_path / layout
    truth = write_toy_dataset(root, layout, **SMALL).set_index("image_id").sort_index()
    result = ingest_dataset(root)
    assert result.layout == layout.split("_")[0]
    assert result.class_names == list(HAM10000_CLASSES)
    rows = _by_id(result.rows)
    assert list(result.rows.columns) == ROW_COLUMNS
    assert list(rows.index) == list(truth.index)
    assert list(rows["diagnosis"]) == list(truth["diagnosis"])
    assert list(rows["malignant"]) == list(truth["malignant"])
    assert set(result.rows["source"]) == {"real"}
    for image_id, path in rows["path"].items():
        assert Path(path).is_absolute()
        assert Path(path) == (root / truth.at[image_id, "file"]).resolve()
    if layout.startswith("ham10000"):
        # Lesion ids and metadata come through the HAM layouts unchanged.
        assert list(rows["group_id"]) == list(truth["lesion_id"])
        assert list(rows["age"]) == list(truth["age"])
        assert list(rows["sex"]) == list(truth["sex"])
        assert list(rows["site"]) == list(truth["site"])
        assert list(rows["dx_type"]) == ["histo"] * len(rows)
    else:
        # No lesion ids in these layouts: each image is its own group, metadata unknown.
        assert list(rows["group_id"]) == list(rows.index)
        assert rows["age"].isna().all()
        assert set(rows["sex"]) == {"unknown"}


def test_auto_detects_each_layout_and_prefers_labels_csv(tmp_path: Path) -> None:
    for layout in ["ham10000", "isic", "folders"]:
        write_toy_dataset(tmp_path / layout, layout, lesions_per_class=1)
    assert detect_layout(tmp_path / "ham10000")[0] == "ham10000"
    assert detect_layout(tmp_path / "isic")[0] == "isic"
    assert detect_layout(tmp_path / "folders") == ("folders", (tmp_path / "folders").resolve())
    csv = tmp_path / "ham10000" / "labels.csv"
    assert detect_layout(csv) == ("ham10000", csv.resolve())  # root may be the CSV itself
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the layout"):
        detect_layout(tmp_path / "empty")


def test_isic_subset_with_scc_is_sorted_and_lower_cased(tmp_path: Path) -> None:
    truth = write_toy_dataset(
        tmp_path, "isic", classes=["nv", "mel", "scc"], lesions_per_class=[2, 1, 1]
    )
    gt = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"
    table = pd.read_csv(gt)
    table["UNK"] = 0.0  # ISIC 2019 ground truth carries an all-zero UNK column
    table.to_csv(gt, index=False)
    result = ingest_dataset(tmp_path)
    assert result.class_names == ["mel", "nv", "scc"]
    assert dict(zip(result.rows["image_id"], result.rows["diagnosis"], strict=True)) == dict(
        zip(truth["image_id"], truth["diagnosis"], strict=True)
    )
    by_dx = result.rows.groupby("diagnosis")["malignant"].first().to_dict()
    assert by_dx == {"mel": 1, "nv": 0, "scc": 1}
    assert any("UNK" in n for n in result.notes)


def test_isic_lesion_id_column_is_used_as_group(tmp_path: Path) -> None:
    truth = write_toy_dataset(tmp_path, "isic", lesions_per_class=1, max_images_per_lesion=3)
    gt = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"
    table = pd.read_csv(gt)
    table["lesion_id"] = truth["lesion_id"]
    table.to_csv(gt, index=False)
    rows = _by_id(ingest_dataset(tmp_path).rows)
    assert list(rows["group_id"]) == list(truth.set_index("image_id").sort_index()["lesion_id"])


def test_original_metadata_with_images_in_root(tmp_path: Path) -> None:
    truth = write_toy_dataset(tmp_path, "ham10000_original", lesions_per_class=1)
    for f in truth["file"]:  # flatten: images next to the CSV
        (tmp_path / f).rename(tmp_path / Path(f).name)
    rows = ingest_dataset(tmp_path, layout="ham10000").rows
    assert sorted(Path(p).parent for p in rows["path"]) == [tmp_path.resolve()] * len(truth)


# ----------------------------------------------------------------------------- bad input


def _rewrite(csv: Path, edit) -> None:
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    edit(table)
    table.to_csv(csv, index=False)


def test_missing_columns_are_named(ham) -> None:
    root, _ = ham
    _rewrite(root / "labels.csv", lambda t: t.rename(columns={"diagnosis": "label"}, inplace=True))
    with pytest.raises(DataError) as err:
        ingest_dataset(root, layout="ham10000")
    assert "labels.csv" in str(err.value) and "diagnosis/dx" in str(err.value)
    assert "found columns" in str(err.value)


def test_isic_without_class_columns_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "gt.csv").write_text("image,notes\nISIC_1,hello\n")
    with pytest.raises(DataError, match="no one-hot class columns"):
        ingest_dataset(tmp_path / "gt.csv", layout="isic")


def test_unknown_diagnosis_names_the_row(ham) -> None:
    root, truth = ham

    def edit(t: pd.DataFrame) -> None:
        t.loc[2, "diagnosis"] = "melanomaa"

    _rewrite(root / "labels.csv", edit)
    with pytest.raises(DataError) as err:
        ingest_dataset(root)
    message = str(err.value)
    assert "line 4" in message and "unknown diagnosis 'melanomaa'" in message
    assert truth["image_id"][2] in message and "skip_bad" in message


def test_duplicate_and_missing_rows_are_all_listed_then_skipped(ham) -> None:
    root, truth = ham

    def edit(t: pd.DataFrame) -> None:
        t.loc[len(t)] = t.loc[0]  # duplicate id on the last line

    _rewrite(root / "labels.csv", edit)
    (root / truth["file"][1]).unlink()  # missing image
    with pytest.raises(DataError) as err:
        ingest_dataset(root)
    message = str(err.value)
    assert message.startswith("2 problem(s)")
    assert (
        f"line 3: {root / 'labels.csv'}: image file not found for {truth['image_id'][1]}" in message
    )
    assert f"duplicate image_id {truth['image_id'][0]} (first on line 2)" in message

    result = ingest_dataset(root, skip_bad=True)
    assert len(result.rows) == len(truth) - 1  # the duplicate and the missing file go
    assert sorted(s["row"] for s in result.skipped) == [3, len(truth) + 2]
    assert truth["image_id"][1] not in set(result.rows["image_id"])
    assert (result.rows["image_id"] == truth["image_id"][0]).sum() == 1


def test_isic_row_with_two_or_no_labels_is_bad(tmp_path: Path) -> None:
    write_toy_dataset(tmp_path, "isic", lesions_per_class=2, max_images_per_lesion=1)
    gt = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"

    def edit(t: pd.DataFrame) -> None:
        t.loc[0, "NV"] = "1.0"  # row 0 is akiec: now two labels
        t.loc[2, "BCC"] = "0.0"  # row 2 is bcc: now none
        t.loc[4, "BKL"] = "yes"

    _rewrite(gt, edit)
    with pytest.raises(DataError) as err:
        ingest_dataset(tmp_path)
    message = str(err.value)
    assert "line 2" in message and "2 positive class columns (AKIEC, NV)" in message
    assert "line 4" in message and "0 positive class columns" in message
    assert "line 6" in message and "not 0 or 1" in message
    result = ingest_dataset(tmp_path, skip_bad=True)
    assert [s["row"] for s in result.skipped] == [2, 4, 6]
    assert len(result.rows) == 14 - 3


def test_empty_class_is_an_error_or_dropped(ham) -> None:
    root, truth = ham
    _rewrite(root / "labels.csv", lambda t: t.drop(t.index[t["diagnosis"] == "df"], inplace=True))
    with pytest.raises(DataError, match="class 'df' has no images"):
        ingest_dataset(root)
    result = ingest_dataset(root, skip_bad=True)
    assert result.class_names == [c for c in HAM10000_CLASSES if c != "df"]
    assert [s["reason"] for s in result.skipped] == [
        "class 'df' has no images; add images or drop the class"
    ]


def test_empty_class_folder_and_duplicate_stems(tmp_path: Path) -> None:
    write_toy_dataset(tmp_path, "folders", classes=["a", "b"], lesions_per_class=2)
    (tmp_path / "c").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="class 'c' has no images"):
        ingest_dataset(tmp_path)
    dup = next((tmp_path / "a").glob("*.jpg"))
    Image.open(dup).save(tmp_path / "b" / (dup.stem + ".png"))
    result = ingest_dataset(tmp_path, skip_bad=True)
    reasons = [s["reason"] for s in result.skipped]
    assert any(r.startswith(f"duplicate image id {dup.stem}") for r in reasons)
    assert result.class_names == ["a", "b"]
    assert any("1 non-image file(s) ignored" in n for n in result.notes)


def test_age_blank_or_text_reads_as_unknown(ham) -> None:
    root, _ = ham

    def edit(t: pd.DataFrame) -> None:
        t.loc[0, "age"] = ""
        t.loc[1, "age"] = "old"
        t.loc[2, "sex"] = ""

    _rewrite(root / "labels.csv", edit)
    result = ingest_dataset(root)
    assert math.isnan(result.rows["age"][0]) and math.isnan(result.rows["age"][1])
    assert result.rows["sex"][2] == "unknown"
    assert any("1 age value(s) are not numbers" in n for n in result.notes)
    assert np.isfinite(result.rows["age"][3:]).all()


ISIC2020_ROWS = [  # image_name, patient_id, diagnosis, benign_malignant, target
    ("ISIC_0000001", "IP_1", "nevus", "benign", "0"),
    ("ISIC_0000002", "IP_1", "melanoma", "malignant", "1"),
    ("ISIC_0000003", "IP_2", "seborrheic keratosis", "benign", "0"),
    ("ISIC_0000004", "IP_2", "lentigo NOS", "benign", "0"),
    ("ISIC_0000005", "IP_3", "unknown", "benign", "0"),
    ("ISIC_0000006", "IP_3", "atypical melanocytic proliferation", "benign", "0"),
    ("ISIC_0000007", "IP_4", "cafe-au-lait macule", "", ""),
]


def _isic2020(root: Path) -> Path:
    (root / "train").mkdir(parents=True)
    for name, *_ in ISIC2020_ROWS:
        Image.new("RGB", (8, 8), (200, 120, 100)).save(root / "train" / f"{name}.jpg")
    table = pd.DataFrame(
        ISIC2020_ROWS,
        columns=["image_name", "patient_id", "diagnosis", "benign_malignant", "target"],
    )
    table.insert(2, "sex", "female")
    table.insert(3, "age_approx", "45")
    table.insert(4, "anatom_site_general_challenge", "torso")
    csv = root / "ISIC_2020_Training_GroundTruth.csv"
    table.to_csv(csv, index=False)
    return csv


def test_isic2020_ground_truth_reads_names_words_and_labels(tmp_path: Path) -> None:
    csv = _isic2020(tmp_path / "isic2020")
    assert detect_layout(tmp_path / "isic2020") == ("ham10000", csv.resolve())
    result = ingest_dataset(tmp_path / "isic2020", evaluation_only=True, skip_bad=True)
    rows = _by_id(result.rows)
    atypical = "atypical melanocytic proliferation"
    assert list(rows["diagnosis"]) == ["nv", "mel", "bkl", "bkl", "unknown", atypical]
    # Words with a HAM10000 class take its malignancy; the rest keep the row's own label.
    assert list(rows["malignant"]) == [0, 1, 0, 0, 0, 0]
    assert list(rows["group_id"]) == ["IP_1", "IP_1", "IP_2", "IP_2", "IP_3", "IP_3"]
    assert list(rows["site"]) == ["torso"] * 6 and list(rows["age"]) == [45.0] * 6
    assert result.class_names == ["bkl", "mel", "nv"]
    # The cafe-au-lait row has neither a HAM10000 class nor a label: listed, not dropped.
    assert [s["row"] for s in result.skipped] == [8]
    assert any("4 diagnosis word(s) read as HAM10000 codes" in n for n in result.notes)


def test_isic2020_unknown_diagnosis_is_refused_for_training(tmp_path: Path) -> None:
    _isic2020(tmp_path / "isic2020")
    with pytest.raises(DataError) as err:
        ingest_dataset(tmp_path / "isic2020")
    message = str(err.value)
    # Three rows without a HAM10000 class, and four HAM10000 classes with no images.
    assert "7 problem(s)" in message and "class 'vasc' has no images" in message
    assert "line 6: " in message and "unknown diagnosis 'unknown' for ISIC_0000005" in message
