"""Teacher ensembles, soft-only synthetic rows, and loss weights counted on hard-label rows."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dermae.classify.common import class_weights, loss_setup
from dermae.classify.ensemble import EnsembleClassifier, build_ensemble
from dermae.classify.model import (
    Classifier,
    build_classifier,
    classifier_config,
    load_classifier,
    save_classifier,
)
from dermae.distill.losses import kd_terms, weighted_ce
from dermae.distill.task import DistillTask
from tests.helpers.tiny_data import torch_threads

CLASSES = ["bcc", "mel", "nv"]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def tiny(arch: str, size: int, seed: int, classes=CLASSES) -> Classifier:
    torch.manual_seed(seed)
    return build_classifier(classifier_config(arch, classes, ["bcc", "mel"], size)).eval()


def test_ensemble_is_the_mean_member_log_probability_at_each_members_resolution():
    small, large = tiny("test_efficientnet", 16, 0), tiny("test_vit", 32, 1)
    ensemble = build_ensemble([small, large], ["a", "b"])
    assert ensemble.config["image_size"] == 32
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        down = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True).clamp(0, 1)
        expected = (F.log_softmax(small(down), -1) + F.log_softmax(large(x), -1)) / 2
        torch.testing.assert_close(ensemble(x), expected)
    # Softmax of the output is the normalised geometric mean of the members' probabilities.
    probs = torch.softmax(ensemble(x), -1)
    geometric = (torch.softmax(small(down), -1) * torch.softmax(large(x), -1)).sqrt()
    torch.testing.assert_close(probs, geometric / geometric.sum(-1, keepdim=True))


def test_ensemble_folder_round_trips_through_the_classifier_functions(tmp_path):
    members = [tiny("test_efficientnet", 16, 0), tiny("test_vit", 16, 1)]
    ensemble = build_ensemble(members, ["x/model", "y/model"])
    save_classifier(tmp_path / "ens", ensemble, {"threshold": {"malignant_risk": 0.4}})
    loaded, config = load_classifier(tmp_path / "ens")
    assert isinstance(loaded, EnsembleClassifier)
    assert config["member_sources"] == ["x/model", "y/model"]
    assert config["threshold"]["malignant_risk"] == 0.4
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ensemble(x))


def test_ensemble_refuses_members_with_other_classes():
    with pytest.raises(ValueError, match="same classes"):
        build_ensemble(
            [tiny("test_vit", 16, 0), tiny("test_vit", 16, 1, ["benign", "malignant"])],
            ["a", "b"],
        )


def test_masked_weighted_ce_equals_plain_weighted_ce_on_the_kept_rows():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    weights = torch.tensor([1.0, 2.0, 4.0])
    keep = torch.tensor([True, False, True, True, False, True])
    torch.testing.assert_close(
        weighted_ce(logits, targets, weights, keep),
        F.cross_entropy(logits[keep], targets[keep], weight=weights),
    )
    everyone = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(
        weighted_ce(logits, targets, weights, everyone),
        F.cross_entropy(logits, targets, weight=weights),
    )
    assert float(weighted_ce(logits, targets, weights, torch.zeros(6, dtype=torch.bool))) == 0.0


def test_synthetic_rows_learn_from_the_teacher_only():
    student, teacher = tiny("test_vit", 16, 0), tiny("test_efficientnet", 16, 1)
    task = DistillTask(student, teacher, alpha=0.5, synthetic_hard_labels=False).eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    synthetic = torch.tensor([False, False, True, True])
    batch = {"image": x, "label": torch.tensor([0, 1, 2, 2]), "synthetic": synthetic}
    relabelled = {**batch, "label": torch.tensor([0, 1, 0, 1])}  # only synthetic labels change
    with torch.no_grad():
        a, b = task(batch), task(relabelled)
        torch.testing.assert_close(a["loss"], b["loss"])
        expected = kd_terms(student(x), teacher(x), batch["label"], 0.5, 2.0, None, ~synthetic)
        torch.testing.assert_close(a["loss"], expected["loss"])
        hard = DistillTask(student, teacher, alpha=0.5, synthetic_hard_labels=True).eval()
        assert not torch.allclose(hard(batch)["loss"], hard(relabelled)["loss"])


def test_class_weights_count_only_the_rows_with_hard_labels():
    targets = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # the last four: synthetic 1s
    counted = np.array([True] * 6 + [False] * 2)
    weights, sampler = loss_setup("weighted_ce", targets, 2, counted)
    assert sampler is None
    torch.testing.assert_close(weights, class_weights(targets[counted], 2))
    assert float(weights[1] / weights[0]) == pytest.approx(2**0.5)  # sqrt(4 / 2)
