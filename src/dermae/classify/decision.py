"""Decision rules fitted on validation: which class to call from a model's probabilities.

Argmax calls the class a model was trained to favour. A model trained with plain CE on an
imbalanced set ranks malignant lesions well but calls "nv" too often; a class-balanced one
calls minorities more but ranks worse (BENCHMARKS section 36). A per-class shift of the log
probabilities, fitted on validation, moves each model to its balanced operating point without
touching training, so every variant of an ablation can share one rule.

Two shifts:

- `prior`: post-hoc logit adjustment (Menon et al. 2021), `log p - tau * log prior`, with one
  `tau` chosen on validation. One number, so it hardly over-fits small validation classes.
- `bias`: a free shift per class, by coordinate ascent on validation balanced accuracy. More
  freedom; with 11 df images in validation it may over-fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score

RULES = ("argmax", "prior", "bias")
TAUS = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2))
BIAS_GRID = tuple(np.round(np.arange(-2.0, 2.01, 0.25), 2))


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-12, None))


def shift_probs(probs: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Probabilities whose log is `log probs + shift` (per class), renormalised."""
    logits = _log(probs) + np.asarray(shift, dtype=float)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def _score(targets: np.ndarray, probs: np.ndarray, shift: np.ndarray) -> float:
    calls = (_log(probs) + shift[None, :]).argmax(axis=1)
    return float(balanced_accuracy_score(targets, calls))


def fit_prior_shift(
    probs: np.ndarray, targets: np.ndarray, prior: np.ndarray, taus: Sequence[float] = TAUS
) -> tuple[np.ndarray, float]:
    """The shift `-tau * log prior` whose `tau` maximises balanced accuracy on (probs, targets).

    Ties go to the smallest tau, so a model already at its balanced point keeps argmax.
    """
    prior = np.asarray(prior, dtype=float)
    if prior.shape != (probs.shape[1],) or (prior <= 0).any():
        raise ValueError(
            f"prior must hold {probs.shape[1]} positive class frequencies, got {prior}"
        )
    log_prior = np.log(prior / prior.sum())
    best_tau, best = 0.0, -1.0
    for tau in taus:
        score = _score(targets, probs, -tau * log_prior)
        if score > best + 1e-12:
            best_tau, best = float(tau), score
    return -best_tau * log_prior, best_tau


def fit_class_bias(
    probs: np.ndarray,
    targets: np.ndarray,
    grid: Sequence[float] = BIAS_GRID,
    sweeps: int = 3,
) -> np.ndarray:
    """A per-class log shift that maximises balanced accuracy, one class at a time.

    Starts at zero and keeps a change only when it strictly improves, so argmax stays where
    nothing beats it. The shift is centred (a common shift changes no call).
    """
    shift = np.zeros(probs.shape[1])
    best = _score(targets, probs, shift)
    for _ in range(sweeps):
        improved = False
        for k in range(probs.shape[1]):
            for value in grid:
                trial = shift.copy()
                trial[k] = value
                score = _score(targets, probs, trial)
                if score > best + 1e-12:
                    shift, best, improved = trial, score, True
        if not improved:
            break
    return shift - shift.mean()


def fit_shift(
    rule: str, probs: np.ndarray, targets: np.ndarray, prior: np.ndarray | None = None
) -> np.ndarray:
    """The per-class log shift of `rule` (see `RULES`), fitted on validation."""
    if rule == "argmax":
        return np.zeros(probs.shape[1])
    if rule == "prior":
        if prior is None:
            raise ValueError("the 'prior' rule needs the training split's class frequencies")
        return fit_prior_shift(probs, targets, prior)[0]
    if rule == "bias":
        return fit_class_bias(probs, targets)
    raise ValueError(f"unknown decision rule '{rule}'; choose one of {RULES}")
