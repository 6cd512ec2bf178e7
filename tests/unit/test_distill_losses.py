import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dermae.distill.losses import kd_loss, kd_terms, soft_kl


def _logits(seed: int, n: int = 6, c: int = 4, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(n, c, generator=torch.Generator().manual_seed(seed))


def _hand_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """KL(softmax(t/T) || softmax(s/T)) per row, averaged over rows, in float64 numpy."""

    def log_softmax(x):
        z = x / temperature
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_ps = log_softmax(student.double().numpy())
    log_pt = log_softmax(teacher.double().numpy())
    return float((np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean())


def test_equal_logits_give_zero_loss_with_alpha_one():
    logits = _logits(0)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    assert kd_loss(logits, logits.clone(), targets, alpha=1.0, temperature=3.0).item() == 0.0


def test_alpha_zero_is_plain_and_weighted_cross_entropy():
    student, teacher = _logits(0), _logits(1)
    targets = torch.tensor([0, 1, 2, 3, 3, 1])
    loss = kd_loss(student, teacher, targets, alpha=0.0, temperature=4.0)
    assert torch.allclose(loss, F.cross_entropy(student, targets), atol=0, rtol=1e-6)

    weights = torch.tensor([1.0, 2.0, 0.5, 3.0])
    weighted = kd_loss(student, teacher, targets, 0.0, 4.0, class_weights=weights)
    nll = -F.log_softmax(student, dim=-1)[torch.arange(6), targets]
    w = weights[targets]
    assert weighted.item() == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_part_is_t_squared_times_hand_kl(temperature):
    student, teacher = _logits(2), _logits(3)
    targets = torch.tensor([0, 1, 2, 3, 2, 1])
    hand = _hand_kl(student, teacher, temperature)
    assert soft_kl(student, teacher, temperature).item() == pytest.approx(hand, rel=1e-5)

    terms = kd_terms(student, teacher, targets, alpha=1.0, temperature=temperature)
    assert terms["kd"].item() == pytest.approx(temperature**2 * hand, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(temperature**2 * hand, rel=1e-5)

    alpha = 0.3
    mixed = kd_loss(student, teacher, targets, alpha, temperature)
    ce = F.cross_entropy(student, targets).item()
    expected = (1 - alpha) * ce + alpha * temperature**2 * hand
    assert mixed.item() == pytest.approx(expected, rel=1e-5)


def test_only_the_student_gets_gradients_and_they_point_to_the_teacher():
    student = _logits(4).requires_grad_(True)
    teacher = _logits(5)
    kd_loss(student, teacher, torch.zeros(6, dtype=torch.long), 1.0, 1.0).backward()
    # d/ds of batchmean KL at T=1 is (softmax(s) - softmax(t)) / N.
    expected = (torch.softmax(student.detach(), -1) - torch.softmax(teacher, -1)) / 6
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_bad_arguments_say_what_is_wrong():
    s, t = _logits(0), _logits(1)
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, y, alpha=1.5, temperature=2.0)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, y, alpha=0.5, temperature=0.0)
    with pytest.raises(ValueError, match="same classes"):
        kd_loss(s, t[:, :3], y, alpha=0.5, temperature=2.0)
