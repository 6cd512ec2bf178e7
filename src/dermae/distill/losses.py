"""Distillation losses: logit KD (Hinton et al. 2015), hard-label CE blended with softened
teacher KL, and an optional relational term on pooled features (similarity-preserving KD,
Tung & Mori 2019). Seven classes give the student only seven numbers per image from the
teacher; the similarities between a batch's images carry more, and need no projection layer
(teacher and student features may differ in width). Measured on cpu-full-phone, the relational
term did not move the student's test balanced accuracy (BENCHMARKS.md section 38)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def soft_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), summed over classes and averaged over the batch.

    Both sides go in as log-probabilities (`log_target=True`): no log of a tiny softmax value.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [N, C]
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # [N, C]
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def weighted_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`F.cross_entropy(weight=...)` (a weighted mean) over the rows `mask` keeps; 0 if none."""
    if mask is None:
        return F.cross_entropy(logits.float(), targets, weight=class_weights)
    per_row = F.cross_entropy(logits.float(), targets, weight=class_weights, reduction="none")
    row_weight = class_weights[targets] if class_weights is not None else torch.ones_like(per_row)
    row_weight = row_weight * mask.to(per_row.dtype)
    return (per_row * mask.to(per_row.dtype)).sum() / row_weight.sum().clamp_min(1e-12)


def kd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    temperature: float,
    class_weights: torch.Tensor | None = None,
    hard_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """{"loss", "ce", "kd"} where loss = (1 - alpha) * ce + alpha * kd and kd = T² · KL.

    The T² factor keeps the soft-target gradients on the same scale as the hard-label ones
    when T changes (the softened gradients shrink as 1/T²).
    `class_weights` weight the hard-label CE only: the teacher's soft targets already carry
    its view of the minority classes. `hard_mask` [N] (bool) limits the CE to some rows (real
    images; synthetic ones then learn from the teacher alone); the KD term uses every row.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distill.alpha must lie in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"distill.temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: teacher and student need the same classes"
        )
    ce = weighted_ce(student_logits, targets, class_weights, hard_mask)
    kd = soft_kl(student_logits, teacher_logits, temperature) * temperature**2
    return {"loss": (1.0 - alpha) * ce + alpha * kd, "ce": ce.detach(), "kd": kd.detach()}


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    temperature: float,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1 - alpha) · CE(student, targets) + alpha · T² · KL(softmax(t/T) ‖ softmax(s/T))."""
    terms = kd_terms(student_logits, teacher_logits, targets, alpha, temperature, class_weights)
    return terms["loss"]


def cosine_gram(features: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities [N, N] of a batch's features [N, D]."""
    unit = F.normalize(features.float().flatten(1), dim=1)
    return unit @ unit.T


def teacher_gram(features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The teacher's similarity target: the mean of its members' cosine Gram matrices (each
    member's features live in their own space, so they are compared within a member only)."""
    members = features if isinstance(features, (list, tuple)) else [features]
    return torch.stack([cosine_gram(f) for f in members]).mean(0)


def relation_loss(student_features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the student's cosine Gram matrix and `target_gram`."""
    gram = cosine_gram(student_features)
    if gram.shape != target_gram.shape:
        raise ValueError(
            f"student batch Gram {tuple(gram.shape)} and teacher's {tuple(target_gram.shape)} differ"
        )
    return F.mse_loss(gram, target_gram.float())
