"""Decision rules fitted on validation: hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from dermae.classify.decision import (
    fit_class_bias,
    fit_prior_shift,
    fit_shift,
    shift_probs,
)


def _biased_toward_first() -> tuple[np.ndarray, np.ndarray]:
    """Two classes; every image leans to class 0 by the same margin, but the minority's images
    lean less: argmax calls everything 0 (balanced accuracy 0.5), a shift separates them."""
    majority = np.tile([0.9, 0.1], (8, 1))
    minority = np.tile([0.7, 0.3], (2, 1))
    return np.vstack([majority, minority]), np.array([0] * 8 + [1] * 2)


def test_shift_probs_is_bayes_reweighting() -> None:
    probs = np.array([[0.5, 0.5], [0.8, 0.2]])
    out = shift_probs(probs, np.log([1.0, 3.0]))
    # p1 * 3 / (p0 + 3 p1)
    assert out[0] == pytest.approx([0.25, 0.75])
    assert out[1] == pytest.approx([0.8 / 1.4, 0.6 / 1.4])
    assert out.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert shift_probs(probs, np.zeros(2)) == pytest.approx(probs)


def test_prior_shift_picks_the_smallest_tau_that_balances() -> None:
    probs, targets = _biased_toward_first()
    prior = np.array([8.0, 2.0])
    shift, tau = fit_prior_shift(probs, targets, prior, taus=[0.0, 0.5, 1.0, 1.5, 2.0])
    # log(0.7/0.3) = 0.85 < tau log 4 needed < log(0.9/0.1) = 2.20: tau log 4 = 1.39 at tau 1.0
    assert tau == 1.0
    assert shift == pytest.approx(-np.log([0.8, 0.2]))
    calls = shift_probs(probs, shift).argmax(1)
    assert (calls == targets).all()


def test_prior_shift_keeps_argmax_when_it_is_already_best() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    shift, tau = fit_prior_shift(probs, np.array([0, 1]), np.array([5.0, 1.0]))
    assert tau == 0.0 and not shift.any()
    with pytest.raises(ValueError, match="prior"):
        fit_prior_shift(probs, np.array([0, 1]), np.array([1.0, 0.0]))


def test_class_bias_separates_and_is_centred() -> None:
    probs, targets = _biased_toward_first()
    shift = fit_class_bias(probs, targets, grid=[-1.0, 0.0, 1.0, 2.0])
    assert shift.sum() == pytest.approx(0.0)
    assert (shift_probs(probs, shift).argmax(1) == targets).all()


def test_fit_shift_dispatches_and_rejects_unknown_rules() -> None:
    probs, targets = _biased_toward_first()
    assert not fit_shift("argmax", probs, targets).any()
    assert fit_shift("prior", probs, targets, np.array([8.0, 2.0]))[1] > 0
    with pytest.raises(ValueError, match="needs"):
        fit_shift("prior", probs, targets)
    with pytest.raises(ValueError, match="unknown decision rule"):
        fit_shift("vote", probs, targets)
