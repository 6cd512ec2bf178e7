"""`dermae calibrate`: a site threshold (and temperature) written into an export, read back."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import beta

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.cli import main
from dermae.data.classes import HAM10000_CLASSES
from dermae.data.toy import write_toy_dataset
from dermae.deploy.calibrate import (
    CALIBRATION_FILE,
    _holdout_path,
    calibrate_command,
    calibrate_export,
    choose_threshold_for_sensitivity,
    exact_interval,
    holdout_evaluation,
    slice_size_effect,
    split_by_group,
)
from dermae.deploy.export import export_onnx
from dermae.deploy.predictor import Predictor
from dermae.deploy.spec import apply_temperature
from dermae.evaluate.summary import external_section
from dermae.metrics import choose_threshold, operating_point
from tests.helpers.tiny_data import torch_threads

SIZE = 16
HAM_THRESHOLD = 0.4


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    with torch_threads(1):
        torch.manual_seed(0)
        config = classifier_config(
            "resnet10t", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], SIZE
        )
        ckpt = save_classifier(
            root / "ckpt",
            build_classifier(config),
            {"threshold": {"malignant_risk": HAM_THRESHOLD, "operating_point": "spec@0.90"}},
        )
        return export_onnx(ckpt, root / "export", int8=False, threads=1)


@pytest.fixture()
def export(export_dir, tmp_path):
    """A fresh copy per test: calibration writes into the export."""
    import shutil

    return shutil.copytree(export_dir, tmp_path / "export")


def clinic(root, classes=("nv", "mel"), lesions=(12, 8), seed=1):
    return write_toy_dataset(
        root,
        layout="folders",
        classes=list(classes),
        lesions_per_class=list(lesions),
        max_images_per_lesion=1,
        seed=seed,
    )


def served(export, folder):
    """What `predict` (and so `serve`) says per image of `folder`, as a table."""
    results = Predictor(export).predict_paths(folder)
    return pd.DataFrame(
        {
            "malignant": [int("/mel/" in r["file"]) for r in results],
            "risk": [r["malignant_risk"] for r in results],
            "flagged": [r["flagged"] for r in results],
            "threshold": [r["threshold"] for r in results],
        }
    )


def test_calibrated_threshold_round_trips_through_the_export(export, tmp_path):
    clinic(tmp_path / "clinic")
    before = served(export, tmp_path / "clinic")

    record = calibrate_export(export, tmp_path / "clinic", target_specificity=0.75, n_boot=50)

    # The threshold is the one choose_threshold picks on the served risks of the slice.
    expected = choose_threshold(before["malignant"].to_numpy(), before["risk"].to_numpy(), 0.75)
    assert record["threshold"] == pytest.approx(expected)
    spec = json.loads((export / "preprocess.json").read_text())
    assert spec["threshold"]["malignant_risk"] == record["threshold"]
    assert spec["threshold"]["ham10000"]["malignant_risk"] == HAM_THRESHOLD
    assert spec["threshold"]["site"]["name"] == "clinic"
    assert spec["temperature"] is None
    after = served(export, tmp_path / "clinic")
    assert (after["threshold"] == record["threshold"]).all()
    point = operating_point(after["malignant"], after["risk"], record["threshold"])
    assert point["specificity"] == record["on_slice"]["specificity"] >= 0.75
    assert after["flagged"].sum() == record["on_slice"]["tp"] + record["on_slice"]["fp"]
    assert record["slice"]["n_images"] == 20 and record["slice"]["n_malignant"] == 8
    # The model card says where the threshold came from.
    card = json.loads((export / "model_card.json").read_text())
    assert card["site_calibration"]["site"] == "clinic"
    assert card["threshold"]["source"].startswith("site calibration: clinic, 20 images")
    assert "## Site calibration" in (export / "MODEL_CARD.md").read_text()
    assert json.loads((export / CALIBRATION_FILE).read_text())["threshold"] == record["threshold"]
    sizes = record["slice_size_effect"]["sizes"]
    assert [s["n_images"] for s in sizes] == [50, 100, 200]
    assert sizes[0]["expected_malignant"] == pytest.approx(50 * 8 / 20)


def test_temperature_is_written_and_applied_by_the_predictor(export, tmp_path):
    clinic(tmp_path / "clinic")
    raw = Predictor(export).predict_paths(tmp_path / "clinic")
    record = calibrate_export(
        export, tmp_path / "clinic", target_sensitivity=0.75, temperature=True, n_boot=20
    )
    t = record["temperature"]["temperature"]
    assert (
        0.05 <= t <= 20
        and record["temperature"]["nll_after"] <= record["temperature"]["nll_before"] + 1e-9
    )
    spec = json.loads((export / "preprocess.json").read_text())
    assert spec["temperature"] == t and spec["threshold"]["sensitivity"] == 0.75
    tempered = Predictor(export).predict_paths(tmp_path / "clinic")
    for before, now in zip(raw, tempered, strict=True):
        p = np.array([list(before["probabilities"].values())], dtype=np.float32)
        expected = apply_temperature(p, t)[0]
        assert list(now["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
    assert record["on_slice"]["sensitivity"] >= 0.75


def test_slice_without_malignant_cases_is_a_clear_error(export, tmp_path, capsys):
    clinic(tmp_path / "benign_only", classes=("nv", "bkl"), lesions=(5, 5))
    with pytest.raises(ValueError, match="holds no malignant case \\(10 benign images\\)"):
        calibrate_export(export, tmp_path / "benign_only")
    spec = json.loads((export / "preprocess.json").read_text())
    assert spec["threshold"]["malignant_risk"] == HAM_THRESHOLD  # nothing written
    code = main(["calibrate", "--model", str(export), "--data", str(tmp_path / "benign_only")])
    assert code == 2
    assert "no malignant case" in capsys.readouterr().err


def test_holdout_compares_fixed_and_adapted_thresholds_without_changing_the_export(
    export, tmp_path
):
    root = tmp_path / "site"
    truth = write_toy_dataset(
        root, layout="isic", classes=["nv", "mel"], lesions_per_class=[14, 10], seed=2
    )
    csv = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    table = pd.read_csv(csv)
    table["lesion_id"] = truth["lesion_id"]
    table.to_csv(csv, index=False)
    spec_before = (export / "preprocess.json").read_bytes()

    result = holdout_evaluation(export, root, test_frac=0.5, target_specificity=0.8, n_boot=50)

    assert (export / "preprocess.json").read_bytes() == spec_before
    assert result["fixed_threshold"]["malignant_risk"] == HAM_THRESHOLD
    assert result["bootstrap"]["unit"] == "lesion or patient (group_id)"
    n_test, n_cal = result["test_part"]["n_images"], result["calibration_part"]["n_images"]
    assert n_test + n_cal == len(truth)
    # Whole lesions go to one part: 7 of 14 benign and 5 of 10 malignant lesions held out.
    rows = truth.rename(columns={"lesion_id": "group_id"})
    test = split_by_group(rows, 0.5, seed=0)
    assert rows[test]["group_id"].nunique() == 12
    assert not set(rows[test]["group_id"]) & set(rows[~test]["group_id"])
    assert n_test == int(test.sum())
    p = result["on_test_part"]
    assert p["specificity_adapted_minus_fixed"] == pytest.approx(
        p["adapted_specificity"] - p["fixed_specificity"]
    )

    # The command writes the same comparison next to the export, and the report shows it.
    args = ["calibrate", "--model", str(export), "--data", str(root), "--holdout", "0.5"]
    assert main([*args, "--target-specificity", "0.8", "--bootstrap", "50"]) == 0
    written = json.loads((tmp_path / "calibrate-holdout-site.json").read_text())
    assert written["on_test_part"] == result["on_test_part"]
    section = external_section(tmp_path)
    rows = section.tables[0]["rows"]
    assert [r["threshold"] for r in rows] == ["fixed", "adapted"]
    assert rows[0]["value"] == HAM_THRESHOLD
    assert rows[1]["specificity (test part)"].startswith(f"{p['adapted_specificity']:.3f}")


def test_calibrate_command_line(export, tmp_path, capsys):
    clinic(tmp_path / "clinic")
    code = main(
        [
            "calibrate", "--model", str(export), "--data", str(tmp_path / "clinic"),
            "--target-specificity", "0.8", "--sizes", "20,40", "--bootstrap", "30",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "site clinic: threshold" in out and "n=  20" in out and "n=  40" in out
    record = json.loads((export / CALIBRATION_FILE).read_text())
    assert record["target"] == {"kind": "specificity", "value": 0.8}


def test_threshold_for_a_target_sensitivity_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0])
    risk = np.array([0.9, 0.8, 0.4, 0.3, 0.5, 0.1])
    # 3 of 4 malignant: the third-highest malignant risk is 0.4, the next lower value 0.3.
    t = choose_threshold_for_sensitivity(y, risk, 0.75)
    assert t == pytest.approx(0.35)
    point = operating_point(y, risk, t)
    assert point["sensitivity"] == 0.75 and point["specificity"] == 0.5
    assert choose_threshold_for_sensitivity(y, risk, 1.0) == pytest.approx(0.2)


def test_exact_interval_is_clopper_pearson():
    lo, hi = exact_interval(9, 10)
    assert lo == pytest.approx(beta.ppf(0.025, 9, 2)) and hi == pytest.approx(
        beta.ppf(0.975, 10, 1)
    )
    assert exact_interval(0, 0) is None


def test_bigger_slices_give_narrower_intervals():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    risk = np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0, 1)
    sizes = slice_size_effect(
        y, risk, lambda a, b: choose_threshold(a, b, 0.9), sizes=(50, 200), n_boot=300
    )
    width = [s["specificity"]["ci95"][1] - s["specificity"]["ci95"][0] for s in sizes]
    assert width[1] < width[0]
    assert sizes[1]["specificity"]["median"] == pytest.approx(0.9, abs=0.03)


def test_server_and_page_use_the_calibrated_threshold(export, tmp_path):
    from fastapi.testclient import TestClient

    from dermae.deploy.server import create_app

    truth = clinic(tmp_path / "clinic")
    record = calibrate_export(
        export, tmp_path / "clinic", target_specificity=0.8, temperature=True, n_boot=20
    )
    image = (tmp_path / "clinic" / truth["file"].iloc[0]).read_bytes()
    expected = Predictor(export).predict_image(image, name="a.jpg")
    with TestClient(create_app(export, threads=1)) as client:
        card = client.get("/model").json()  # what the page shows under "Threshold"
        body = client.post("/predict", files={"file": ("a.jpg", image, "image/jpeg")}).json()
    assert card["threshold"]["malignant_risk"] == record["threshold"]
    assert card["threshold"]["source"].startswith("site calibration: clinic")
    assert body["threshold"] == record["threshold"]
    assert body["malignant_risk"] == pytest.approx(expected["malignant_risk"], abs=1e-6)


@pytest.mark.parametrize("label_only", [False, True])
def test_temperature_recovers_a_known_overconfidence(label_only):
    """Labels drawn from softmax(z / 2) while the model says softmax(z): T is about 2, fitted
    per class, or on benign/malignant alone when no diagnosis is known."""
    from dermae.deploy.calibrate import fit_temperature
    from dermae.evaluate.external import SetLabels

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (6000, 3))
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    true = apply_temperature(probs, 2.0)
    y = np.array([rng.choice(3, p=p) for p in true])
    malignant = (y == 0).astype(np.int64)
    target = np.full_like(y, -1) if label_only else y
    fitted = fit_temperature(probs, SetLabels(target, malignant, np.full_like(y, -1)), [0])
    assert fitted["temperature"] == pytest.approx(2.0, rel=0.1)
    assert fitted["fitted_on"].startswith("benign/malignant" if label_only else "per-class")


def test_holdout_out_accepts_a_file_or_a_folder_and_names_a_missing_folder(tmp_path):
    export, data = tmp_path / "export", tmp_path / "site"
    export.mkdir()
    beside = _holdout_path(None, export, data)
    assert beside == tmp_path / "calibrate-holdout-site.json"
    assert _holdout_path(tmp_path / "r.json", export, data) == tmp_path / "r.json"
    assert _holdout_path(export, export, data) == export / "calibrate-holdout-site.json"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _holdout_path(tmp_path / "nowhere" / "r.json", export, data)


def test_out_without_holdout_is_refused_before_the_export_is_touched(tmp_path):
    # --out only applies to --holdout; silently ignoring it would leave the user looking for a file.
    with pytest.raises(ValueError, match="--holdout"):
        calibrate_command(tmp_path / "no-export", tmp_path / "no-data", out=tmp_path / "r.json")
