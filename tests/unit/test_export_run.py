"""export_run: the pipeline entry reads a prepared run dir and keeps each split to its role."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.config import load_config
from dermae.data.classes import HAM10000_CLASSES
from dermae.data.prepared import MANIFEST_COLUMNS
from dermae.deploy.export import export_run
from dermae.deploy.stages import export_stage

SIZE = 32
COUNTS = {"train": 30, "val": 20, "test": 12}


def write_prepared(run_dir, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(COUNTS.values())
    root = run_dir / "data"
    root.mkdir(parents=True)
    np.save(root / "images.npy", rng.integers(0, 255, (n, SIZE, SIZE, 3), dtype=np.uint8))
    labels = rng.integers(0, 7, n)
    splits = [s for s, c in COUNTS.items() for _ in range(c)]
    manifest = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "path": [f"images/img{i}.jpg" for i in range(n)],
            "diagnosis": [HAM10000_CLASSES[k] for k in labels],
            "label": labels,
            "malignant": np.isin(labels, [0, 1, 4]).astype(int),
            "group_id": [f"L{i}" for i in range(n)],
            "age": 50,
            "sex": "female",
            "site": "back",
            "dx_type": "histo",
            "split": splits,
            "source": "real",
            "cache_index": np.arange(n),
        }
    )[MANIFEST_COLUMNS]
    manifest.to_csv(root / "manifest.csv", index=False)
    info = {
        "class_names": list(HAM10000_CLASSES),
        "malignant_classes": ["akiec", "bcc", "mel"],
        "image_size": SIZE,
    }
    (root / "info.json").write_text(json.dumps(info))
    return manifest


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores
    yield
    torch.set_num_threads(before)


def test_export_run_uses_train_for_calibration_val_for_choices_test_for_report(tmp_path):
    run_dir = tmp_path / "run"
    manifest = write_prepared(run_dir)
    torch.manual_seed(0)
    config = classifier_config(
        "test_efficientnet", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], SIZE
    )
    ckpt = save_classifier(tmp_path / "ckpt", build_classifier(config))  # no threshold stored
    cfg = load_config(
        None,
        [
            f"run_dir={run_dir}",
            "export.calibration_images=16",
            "export.int8_variants=[qoperator]",
            "export.threshold_specificity=0.8",
        ],
    )
    out = export_run(cfg, ckpt)
    assert out == run_dir / "export"
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["n_calibration_images"] == 16  # sampled from the 30 train images
    assert report["variants"]["qoperator"]["val"]["n_images"] == COUNTS["val"]
    assert report["variants"]["qoperator"]["test"]["n_images"] == COUNTS["test"]
    assert "metrics" in report["variants"]["fp32"]["test"]
    spec = json.loads((out / "preprocess.json").read_text())
    assert spec["threshold"]["specificity"] == 0.8
    assert spec["threshold"]["source"].startswith("validation")
    # The threshold keeps >= 80 % of benign validation cases below it.
    from dermae.deploy.predictor import Predictor

    predictor = Predictor(out, model_file="model.onnx")
    val = manifest[manifest["split"] == "val"]
    images = np.load(run_dir / "data" / "images.npy")[val["cache_index"].to_numpy()]
    probs = predictor.predict_array(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    risk = probs[:, [0, 1, 4]].sum(1)
    benign = val["malignant"].to_numpy() == 0
    assert (risk[benign] < spec["threshold"]["malignant_risk"]).mean() >= 0.8


def test_export_run_refuses_test_split_for_calibration(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "export.calibration_split=test"])
    with pytest.raises(ValueError, match="calibration_split"):
        export_run(cfg, tmp_path / "ckpt")


def test_export_stage_exports_the_student_with_its_test_metrics(tmp_path):
    run_dir = tmp_path / "run"
    write_prepared(run_dir)
    torch.manual_seed(0)
    config = classifier_config(
        "test_efficientnet", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], SIZE
    )
    threshold = {"malignant_risk": 0.3, "operating_point": "spec@0.95", "chosen_on": "val"}
    extra = {"threshold": threshold, "thresholds": {"spec@0.90": 0.2, "spec@0.95": 0.3}}
    save_classifier(run_dir / "student" / "model", build_classifier(config), extra)
    metrics = {
        "split": "test",
        "n_images": 12,
        "n_lesions": 12,
        "bootstrap": {"resamples": 1000, "unit": "lesion (group_id)"},
        "scalars": {"balanced_accuracy": 0.61, "malignant_auroc": 0.8, "ece": None},
        "ci95": {"balanced_accuracy": [0.55, 0.67], "malignant_auroc": [0.7, 0.9]},
        "metrics": {"confusion_matrix": [[1]]},  # details stay out of the card
    }
    (run_dir / "evaluate" / "student").mkdir(parents=True)
    (run_dir / "evaluate" / "student" / "metrics.json").write_text(json.dumps(metrics))
    cfg = load_config(None, [f"run_dir={run_dir}", "export.int8=false"])
    out = export_stage(cfg, run_dir)
    text = (out / "MODEL_CARD.md").read_text()
    assert "test split, 12 images of 12 lesions" in text
    assert "| balanced_accuracy | 0.61 (95% CI 0.55–0.67) |" in text
    assert "| ece | n/a |" in text
    card = json.loads((out / "model_card.json").read_text())
    assert "confusion_matrix" not in json.dumps(card["metrics"])
    spec = json.loads((out / "preprocess.json").read_text())
    assert spec["threshold"]["malignant_risk"] == 0.3
    assert spec["threshold"]["specificity"] == 0.95
    assert spec["threshold"]["operating_points"] == {"spec@0.90": 0.2, "spec@0.95": 0.3}
    assert spec["recommended_model"] == "model.onnx"
