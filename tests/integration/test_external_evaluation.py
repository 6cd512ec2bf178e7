"""`dermae evaluate --data`: an external set with only some of the model's classes."""

import json

import numpy as np
import torch

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.config import load_config
from dermae.data.classes import HAM10000_CLASSES
from dermae.data.toy import write_toy_dataset
from dermae.evaluate.run import evaluate_command


def test_partial_class_external_set_is_scored_not_crashed_on(tmp_path):
    torch.manual_seed(0)
    model = build_classifier(
        classifier_config("resnet10t", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], 16)
    )
    model_dir = save_classifier(
        tmp_path / "student" / "model", model, {"thresholds": {"spec@0.90": 0.3}}
    )
    external = tmp_path / "clinic"
    truth = write_toy_dataset(
        external,
        layout="folders",
        classes=["nv", "mel"],
        lesions_per_class=6,
        max_images_per_lesion=1,
    )
    cfg = load_config(None, [f"run_dir={tmp_path}", "data.image_size=16", "evaluate.bootstrap=50"])

    metrics_path = evaluate_command(cfg, model_dir=model_dir, data=external)

    result = json.loads(metrics_path.read_text())
    assert result["n_images"] == len(truth) == 12
    assert result["n_excluded_unknown_class"] == 0
    per_class = result["metrics"]["per_class"]
    assert per_class["nv"]["support"] == 6 and per_class["mel"]["support"] == 6
    assert per_class["df"]["support"] == 0 and per_class["df"]["sensitivity"] is None
    # Malignant vs benign comes from the 7-class probabilities (risk = p(akiec)+p(bcc)+p(mel)).
    predictions = (metrics_path.parent / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 13
    assert result["scalars"]["malignant_auroc"] is not None
    assert np.isfinite(result["scalars"]["malignant_auroc"])
