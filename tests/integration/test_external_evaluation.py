"""External sets: `dermae evaluate --data` and `evaluate.external` in the evaluate stage."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.config import EvalConfig, load_config
from dermae.data.classes import HAM10000_CLASSES
from dermae.data.ingest import ingest_dataset
from dermae.data.toy import write_toy_dataset
from dermae.evaluate.external import (
    SetLabels,
    evaluate_external,
    paired_on_external,
    score_set,
    set_labels,
)
from dermae.evaluate.run import evaluate_command, evaluate_stage
from dermae.evaluate.summary import external_section
from tests.helpers.tiny_data import make_prepared, torch_threads

MALIGNANT = ["akiec", "bcc", "mel"]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def tiny_model(
    folder, classes=HAM10000_CLASSES, malignant=MALIGNANT, size=16, threshold=0.3, seed=0
):
    torch.manual_seed(seed)
    model = build_classifier(classifier_config("resnet10t", list(classes), malignant, size))
    extra = {
        "thresholds": {"spec@0.90": threshold},
        "threshold": {"malignant_risk": threshold, "operating_point": "spec@0.90"},
    }
    return save_classifier(folder, model, extra)


def risk_of(table, malignant=MALIGNANT):
    return table[[f"p_{c}" for c in malignant]].sum(axis=1).to_numpy()


# ----------------------------------------------------------------------------- hand-made case


def hand_made():
    """Two mel, two nv, one label-only malignant and one label-only benign row."""
    names = list(HAM10000_CLASSES)
    probs = np.zeros((6, 7))
    mel, nv, bcc = names.index("mel"), names.index("nv"), names.index("bcc")
    for row, (p_mel, p_nv, p_bcc) in enumerate(
        [(0.8, 0.2, 0), (0.3, 0.7, 0), (0.1, 0.9, 0), (0.6, 0.4, 0), (0, 0.3, 0.7), (0.2, 0.8, 0)]
    ):
        probs[row, [mel, nv, bcc]] = p_mel, p_nv, p_bcc
    rows = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(6)],
            "group_id": [f"img{i}" for i in range(6)],
            "diagnosis": ["mel", "mel", "nv", "nv", "unknown", "unknown"],
            "malignant": [1, 1, 0, 0, 1, 0],
        }
    )
    return rows, probs, names


def test_score_set_on_a_hand_made_case():
    rows, probs, names = hand_made()
    result = score_set(rows, probs, names, MALIGNANT, {"spec@0.90": 0.5}, EvalConfig(bootstrap=200))
    s = result["scalars"]
    # Malignant: positives 0.8, 0.3, 0.7 against negatives 0.1, 0.6, 0.2 -> 8 of 9 pairs.
    assert s["malignant_auroc"] == pytest.approx(8 / 9)
    # mel vs rest: the label-only malignant row has unknown melanoma status and is left out;
    # mel 0.8, 0.3 against 0.1, 0.6, 0.2 -> 5 of 6 pairs.
    assert s["mel_auroc"] == pytest.approx(5 / 6)
    assert result["n_mel_status_known"] == 5
    # At 0.5: called 0.8, 0.6, 0.7 -> sensitivity 2/3, specificity 2/3 (all six rows).
    assert s["malignant_sensitivity[spec@0.90]"] == pytest.approx(2 / 3)
    assert s["malignant_specificity[spec@0.90]"] == pytest.approx(2 / 3)
    # Per class only the four rows with a known diagnosis: one mel and one nv right.
    assert s["balanced_accuracy"] == pytest.approx(0.5)
    assert s["accuracy"] == pytest.approx(0.5)
    assert result["n_per_class_scored"] == 4
    assert result["n_excluded_from_per_class"] == 2
    assert result["excluded_from_per_class_by_diagnosis"] == {"unknown": 2}
    assert result["classes_present"] == ["mel", "nv"]
    assert result["bootstrap"]["unit"] == "image (the set has no lesion ids)"
    lo, hi = result["ci95"]["malignant_auroc"]
    assert lo <= s["malignant_auroc"] <= hi


def test_labels_survive_packing_for_the_bootstrap():
    rows, _, names = hand_made()
    labels = set_labels(rows, names)
    assert labels.target.tolist() == [4, 4, 5, 5, -1, -1]
    assert labels.mel.tolist() == [1, 1, 0, 0, -1, 0]
    again = SetLabels.unpack(labels.packed())
    for field in ("target", "malignant", "mel"):
        assert getattr(again, field).tolist() == getattr(labels, field).tolist()


def test_lesion_ids_make_the_bootstrap_resample_lesions():
    rows, probs, names = hand_made()
    rows["group_id"] = ["L1", "L1", "L2", "L3", "L4", "L5"]
    result = score_set(rows, probs, names, MALIGNANT, {}, EvalConfig(bootstrap=50))
    assert result["bootstrap"]["unit"] == "lesion or patient (group_id)"
    assert result["n_groups"] == 5


# ----------------------------------------------------------------------------- generated sets


def folder_set(root):
    """nv / mel folders, a benign-only folder (label, no diagnosis), an unusable folder."""
    truth = write_toy_dataset(
        root, layout="folders", classes=["nv", "mel", "benign", "unknown"],
        lesions_per_class=[5, 4, 3, 2], max_images_per_lesion=1,
    )  # fmt: skip
    return truth


def isic_set(root):
    """ISIC one-hot CSV with lesion ids; two rows carry only benign_malignant, one nothing."""
    truth = write_toy_dataset(
        root, layout="isic", classes=["mel", "nv"], lesions_per_class=[4, 5],
        max_images_per_lesion=2, seed=3,
    )  # fmt: skip
    csv = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    table = pd.read_csv(csv)
    table["lesion_id"] = truth["lesion_id"]
    table["benign_malignant"] = np.where(truth["malignant"] == 1, "malignant", "benign")
    table.loc[[0, 1], ["MEL", "NV"]] = 0.0  # diagnosis unknown, label known
    table.loc[2, ["MEL", "NV"]] = 0.0
    table.loc[2, "benign_malignant"] = ""  # nothing usable: skipped and listed
    table.loc[3, "lesion_id"] = ""  # still scored, as its own group
    table.to_csv(csv, index=False)
    return truth


def test_partial_class_external_set_is_scored_not_crashed_on(tmp_path):
    model_dir = tiny_model(tmp_path / "student" / "model")
    external = tmp_path / "clinic"
    truth = write_toy_dataset(
        external, layout="folders", classes=["nv", "mel"], lesions_per_class=6,
        max_images_per_lesion=1,
    )  # fmt: skip
    cfg = load_config(None, [f"run_dir={tmp_path}", "data.image_size=16", "evaluate.bootstrap=50"])

    metrics_path = evaluate_command(cfg, model_dir=model_dir, data=external)

    result = json.loads(metrics_path.read_text())
    assert result["n_images"] == len(truth) == 12
    assert result["n_excluded_from_per_class"] == 0 and result["n_skipped"] == 0
    per_class = result["metrics"]["per_class"]
    assert per_class["nv"]["support"] == 6 and per_class["mel"]["support"] == 6
    assert per_class["df"]["support"] == 0 and per_class["df"]["sensitivity"] is None
    predictions = pd.read_csv(metrics_path.parent / "predictions.csv")
    assert len(predictions) == 12
    expected = roc_auc_score(predictions["malignant"], risk_of(predictions))
    assert result["scalars"]["malignant_auroc"] == pytest.approx(expected)
    assert result["bootstrap"]["unit"] == "image (the set has no lesion ids)"


def test_folders_and_isic_sets_in_the_evaluate_stage(tmp_path):
    run_dir = tmp_path / "run"
    classes = ("mel", "nv", "bcc")
    make_prepared(run_dir, n_per_class=10, size=16, classes=classes)
    tiny_model(run_dir / "student" / "model", classes, ["mel", "bcc"])
    tiny_model(run_dir / "baseline" / "model", classes, ["mel", "bcc"], seed=1)
    folders = folder_set(tmp_path / "clinic_folders")
    isic = isic_set(tmp_path / "clinic_isic")
    cfg = load_config(
        None,
        [
            f"run_dir={run_dir}",
            "data.image_size=16",
            "evaluate.bootstrap=50",
            f"evaluate.external=[{{name: folders, path: {tmp_path / 'clinic_folders'}}}, "
            f"{{name: isic, path: {tmp_path / 'clinic_isic'}, layout: isic}}]",
        ],
    )

    evaluate_stage(cfg, run_dir)

    out = run_dir / "evaluate" / "external"
    summary = json.loads((out / "external.json").read_text())
    # Folders: the "unknown" folder has no usable label (skipped, each image listed); the
    # "benign" folder counts for the malignant metrics only.
    f = json.loads((out / "folders" / "student" / "metrics.json").read_text())
    n_unknown = int((folders["diagnosis"] == "unknown").sum())
    n_benign = int((folders["diagnosis"] == "benign").sum())
    assert f["n_skipped"] == n_unknown == 2
    skipped = pd.read_csv(out / "folders" / "student" / "skipped.csv")
    assert sorted(skipped["file"].map(lambda p: p.split("/")[-1].split(".")[0])) == sorted(
        folders.loc[folders["diagnosis"] == "unknown", "image_id"]
    )
    assert skipped["reason"].str.contains("no benign/malignant label").all()
    assert f["n_images"] == len(folders) - n_unknown
    assert f["n_excluded_from_per_class"] == n_benign
    assert f["excluded_from_per_class_by_diagnosis"] == {"benign": n_benign}
    assert f["classes_present"] == ["mel", "nv"]
    assert f["n_benign"] == int(folders["diagnosis"].isin(["nv", "benign"]).sum())
    assert f["bootstrap"]["unit"] == "image (the set has no lesion ids)"
    preds = pd.read_csv(out / "folders" / "student" / "predictions.csv")
    expected = roc_auc_score(preds["malignant"], risk_of(preds, ["mel", "bcc"]))
    assert f["scalars"]["malignant_auroc"] == pytest.approx(expected)
    status = preds["diagnosis"].isin(["mel", "nv", "benign"])
    expected_mel = roc_auc_score(
        preds.loc[status, "diagnosis"] == "mel", preds.loc[status, "p_mel"]
    )
    assert f["scalars"]["mel_auroc"] == pytest.approx(expected_mel)

    # ISIC: lesion ids -> lesion bootstrap; two label-only rows, one skipped row (CSV line 4).
    i = json.loads((out / "isic" / "student" / "metrics.json").read_text())
    assert i["bootstrap"]["unit"] == "lesion or patient (group_id)"
    assert i["n_skipped"] == 1 and i["n_images"] == len(isic) - 1
    assert any("1 row(s) have no lesion_id" in note for note in i["data_notes"])
    assert i["n_excluded_from_per_class"] == 2
    skipped = pd.read_csv(out / "isic" / "student" / "skipped.csv")
    assert skipped["row"].tolist() == [4]
    preds = pd.read_csv(out / "isic" / "student" / "predictions.csv", dtype={"image_id": str})
    assert preds["malignant"].tolist() == isic["malignant"].drop(index=2).tolist()

    # Internal and external side by side, with the same metrics.
    table = summary["table"]
    assert [r["data"] for r in table] == ["internal test", "folders", "isic"] * 2
    assert summary["results"]["student"]["internal"]["n_images"] == 6
    section = external_section(run_dir)
    assert section is not None and section.tables[0]["rows"] == table

    # Paired: student minus baseline on each set, the same images resampled for both.
    paired = paired_on_external(cfg, out, ["student", "baseline"], reference="baseline")
    b = json.loads((out / "isic" / "baseline" / "metrics.json").read_text())
    diff = paired["isic"]["student - baseline"]["malignant_auroc"]["diff"]
    assert diff == pytest.approx(i["scalars"]["malignant_auroc"] - b["scalars"]["malignant_auroc"])
    assert "mel_auroc" in paired["folders"]["student - baseline"]


def test_binary_only_set_counts_for_the_malignant_metrics(tmp_path):
    """A benign/malignant-only HAM-style CSV (dx benign/malignant) is scored, not refused."""
    root = tmp_path / "binary"
    truth = write_toy_dataset(root, layout="ham10000", classes=["nv", "mel"], lesions_per_class=4)
    labels = pd.read_csv(root / "labels.csv")
    labels["diagnosis"] = np.where(labels["malignant"] == 1, "malignant", "benign")
    labels.to_csv(root / "labels.csv", index=False)
    result = ingest_dataset(root, evaluation_only=True, skip_bad=True)
    assert result.skipped == []
    assert result.rows["malignant"].tolist() == truth["malignant"].tolist()
    assert result.class_names == []


def test_ham_slice_rewritten_in_other_layouts_reads_the_same(tmp_path):
    """HAM-like data sliced and rewritten as class folders and as an ISIC CSV."""
    ham = tmp_path / "ham"
    truth = write_toy_dataset(ham, layout="ham10000", lesions_per_class=2, seed=5)
    piece = truth[truth["diagnosis"].isin(["mel", "nv", "bkl"])].reset_index(drop=True)
    folders, isic = tmp_path / "as_folders", tmp_path / "as_isic"
    for _, row in piece.iterrows():
        (folders / row["diagnosis"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(ham / row["file"], folders / row["diagnosis"] / f"{row['image_id']}.jpg")
    isic.mkdir()
    onehot = pd.DataFrame({"image": piece["image_id"], "lesion_id": piece["lesion_id"]})
    for name in ("MEL", "NV", "BKL"):
        onehot[name] = (piece["diagnosis"] == name.lower()).astype(float)
    onehot.to_csv(isic / "truth.csv", index=False)
    for _, row in piece.iterrows():
        shutil.copy(ham / row["file"], isic / f"{row['image_id']}.jpg")

    def read(root):
        rows = ingest_dataset(root, evaluation_only=True).rows
        return rows.sort_values("image_id")[["image_id", "diagnosis", "malignant"]]

    expected = piece.sort_values("image_id")[["image_id", "diagnosis", "malignant"]]
    for root in (folders, isic):
        got = read(root)
        assert got.to_numpy().tolist() == expected.to_numpy().tolist()
    grouped = ingest_dataset(isic, evaluation_only=True).rows.set_index("image_id")
    assert grouped.loc[piece["image_id"], "group_id"].tolist() == piece["lesion_id"].tolist()


def test_external_set_entries_need_a_name_and_path(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "evaluate.external=[{path: /x}]"])
    model_dir = tiny_model(tmp_path / "m" / "model")
    with pytest.raises(ValueError, match="needs both a name and a path"):
        evaluate_external(cfg, tmp_path, {"student": model_dir})


def test_real_ham10000_test_slice_rewritten_as_another_site(tmp_path):
    """Real HAM10000 test-split lesions (nevus vs melanoma) rewritten as an ISIC CSV with
    lesion ids and some label-only rows, and as class folders: the same images give the same
    malignant AUROC in both layouts; only the bootstrap unit differs."""
    from dermae.config import default_data_root
    from dermae.data.splits import assign_splits

    root = next(
        (
            p
            for p in (Path(default_data_root()), Path(__file__).parents[2] / default_data_root())
            if (p / "labels.csv").exists()
        ),
        None,
    )
    if root is None:
        pytest.skip(f"real HAM10000 not found at {default_data_root()!r} (set DERMAE_DATA)")
    rows = ingest_dataset(root).rows
    test = rows[assign_splits(rows, 0.1, 0.2, seed=0) == "test"]
    lesions = [
        g
        for dx in ("nv", "mel")
        for g in sorted(set(test.loc[test["diagnosis"] == dx, "group_id"]))[:8]
    ]
    piece = test[test["group_id"].isin(lesions)].sort_values("image_id").reset_index(drop=True)
    isic, folders = tmp_path / "site_isic", tmp_path / "site_folders"
    isic.mkdir()
    label_only = piece.index[:3]  # their diagnosis is withheld, the benign/malignant label kept
    table = pd.DataFrame({"image": piece["image_id"], "lesion_id": piece["group_id"]})
    for dx in ("MEL", "NV"):
        table[dx] = (piece["diagnosis"] == dx.lower()).astype(float)
    table.loc[label_only, ["MEL", "NV"]] = 0.0
    table["benign_malignant"] = np.where(piece["malignant"] == 1, "malignant", "benign")
    table.to_csv(isic / "ground_truth.csv", index=False)
    for i, row in piece.iterrows():
        shutil.copy(row["path"], isic / f"{row['image_id']}.jpg")
        folder = (
            ("malignant" if row["malignant"] else "benign") if i in label_only else row["diagnosis"]
        )
        (folders / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(row["path"], folders / folder / f"{row['image_id']}.jpg")
    model_dir = tiny_model(tmp_path / "student" / "model")
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path}",
            "evaluate.bootstrap=100",
            f"evaluate.external=[{{name: isic, path: {isic}}}, {{name: folders, path: {folders}}}]",
        ],
    )

    summary = evaluate_external(cfg, tmp_path, {"student": model_dir})

    a, b = summary["results"]["student"]["isic"], summary["results"]["student"]["folders"]
    assert a["n_images"] == b["n_images"] == len(piece)
    assert a["n_excluded_from_per_class"] == b["n_excluded_from_per_class"] == 3
    assert a["n_malignant"] == b["n_malignant"] == int(piece["malignant"].sum())
    assert a["scalars"]["malignant_auroc"] == pytest.approx(b["scalars"]["malignant_auroc"])
    assert a["scalars"]["mel_auroc"] == pytest.approx(b["scalars"]["mel_auroc"])
    assert a["bootstrap"]["unit"].startswith("lesion") and b["bootstrap"]["unit"].startswith(
        "image"
    )
    assert a["n_groups"] == len(lesions)
