"""Relational KD (`distill.relation_weight`): the similarity target, its loss, and the task."""

import math

import pytest
import torch
from torch.nn import functional as F

from dermae.classify.ensemble import build_ensemble
from dermae.distill.losses import cosine_gram, kd_terms, relation_loss, teacher_gram
from dermae.distill.task import DistillTask
from tests.unit.test_distill_task import batch_of, images
from tests.unit.test_distill_views import one_thread, tiny  # noqa: F401 (autouse fixture)


def test_cosine_gram_of_hand_made_features():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    half = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, 0.0, half], [0.0, 1.0, half], [half, half, 1.0]])
    assert torch.allclose(cosine_gram(features), expected, atol=1e-6)


def test_teacher_gram_is_the_mean_of_its_members_grams():
    a, b = torch.randn(5, 4), torch.randn(5, 7)  # members of different widths
    assert torch.allclose(teacher_gram([a, b]), (cosine_gram(a) + cosine_gram(b)) / 2)
    assert torch.equal(teacher_gram(a), cosine_gram(a))


def test_relation_loss_ignores_scale_and_width_and_sees_structure():
    teacher = torch.randn(6, 8)
    target = teacher_gram(teacher)
    assert float(relation_loss(3.0 * teacher, target)) == pytest.approx(0.0, abs=1e-10)
    # The same similarities from wider features (a zero-padded copy) cost nothing either.
    assert float(relation_loss(F.pad(teacher, (0, 5)), target)) == pytest.approx(0.0, abs=1e-10)
    shuffled = teacher[torch.tensor([1, 0, 2, 3, 5, 4])]
    expected = F.mse_loss(cosine_gram(shuffled), target)
    assert float(relation_loss(shuffled, target)) == pytest.approx(float(expected))
    assert float(expected) > 0.01
    with pytest.raises(ValueError, match="Gram"):
        relation_loss(torch.randn(5, 8), target)


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_vit"])
def test_forward_with_features_gives_forwards_logits(arch):
    model = tiny(arch, 16).eval()
    x = images()
    logits, features = model.forward_with_features(x)
    assert torch.allclose(logits, model(x), atol=1e-6)
    assert features.ndim == 2 and len(features) == len(x)


def test_ensemble_features_come_from_each_member_at_its_own_resolution():
    members = [tiny("test_efficientnet", 16, seed=1), tiny("test_vit", 32, seed=2)]
    ensemble = build_ensemble(members, ["a", "b"]).eval()
    x = images(size=16)
    log_probs, features = ensemble.forward_with_features(x)
    assert torch.allclose(log_probs, ensemble(x), atol=1e-6)
    up = F.interpolate(x, size=32, mode="bilinear", antialias=True)
    first, second = ensemble.members
    assert torch.allclose(features[0], first.forward_with_features(x)[1], atol=1e-6)
    assert torch.allclose(features[1], second.forward_with_features(up)[1], atol=1e-6)


def test_task_adds_weighted_relation_term_to_the_kd_loss():
    student, teacher = tiny("test_vit", 16), tiny("test_efficientnet", 16, seed=1)
    task = DistillTask(student, teacher, alpha=0.5, temperature=2.0, relation_weight=4.0).eval()
    batch = batch_of(images())
    out = task(batch)
    with torch.no_grad():
        student_logits, student_features = student.forward_with_features(batch["image"])
        teacher_logits, teacher_features = teacher.forward_with_features(batch["image"])
    kd = kd_terms(student_logits, teacher_logits, batch["label"], 0.5, 2.0)
    relation = relation_loss(student_features, teacher_gram(teacher_features))
    assert float(out["relation"]) == pytest.approx(float(relation), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(kd["loss"] + 4.0 * relation), rel=1e-5)
    plain = DistillTask(student, teacher, alpha=0.5, temperature=2.0).eval()(batch)
    assert "relation" not in plain
    assert float(plain["loss"]) == pytest.approx(float(kd["loss"]), rel=1e-5)


def test_relation_term_falls_when_the_student_trains_on_it():
    student, teacher = tiny("test_efficientnet", 16), tiny("test_vit", 16, seed=1)
    # The loss also holds the CE and KD terms; the relation term must fall all the same.
    task = DistillTask(student, teacher, alpha=0.5, temperature=2.0, relation_weight=10.0)
    batch = batch_of(images(n=8))
    optimizer = torch.optim.Adam(task.model.parameters(), lr=3e-3)
    task.train()
    first = float(task(batch)["relation"])
    for _ in range(60):
        optimizer.zero_grad()
        task(batch)["loss"].backward()
        optimizer.step()
    assert float(task(batch)["relation"]) < 0.5 * first


def test_relation_weight_is_checked():
    student, teacher = tiny("test_vit", 16), tiny("test_efficientnet", 16, seed=1)
    with pytest.raises(ValueError, match="relation_weight must be >= 0"):
        DistillTask(student, teacher, relation_weight=-1.0)
    with pytest.raises(ValueError, match="live teacher"):
        DistillTask(student, teacher, cached_logits=torch.zeros(6, 3), relation_weight=1.0)
