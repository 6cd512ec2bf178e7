"""Operating thresholds on malignant risk, chosen on validation data."""

from __future__ import annotations

import numpy as np
import pytest

from dermae.metrics import (
    choose_threshold,
    choose_thresholds,
    operating_point,
    sensitivity_at_specificity,
    threshold_key,
)

# 10 benign, 3 malignant
BENIGN = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.7]
MALIGNANT = [0.5, 0.8, 0.9]
Y = np.array([0] * 10 + [1] * 3)
RISK = np.array(BENIGN + MALIGNANT)


def test_hand_case() -> None:
    t = choose_thresholds(Y, RISK, (0.90, 0.95))
    assert list(t) == ["spec@0.90", "spec@0.95"]
    # 90 %: 9 benign must fall below -> above the 9th benign risk (.45), halfway to the next (.5)
    assert t["spec@0.90"] == pytest.approx(0.475)
    # 95 %: ceil(9.5) = all 10 benign below -> above .7, halfway to .8
    assert t["spec@0.95"] == pytest.approx(0.75)
    p90 = operating_point(Y, RISK, t["spec@0.90"])
    assert p90["specificity"] == pytest.approx(0.9) and p90["sensitivity"] == pytest.approx(1.0)
    p95 = operating_point(Y, RISK, t["spec@0.95"])
    assert p95["specificity"] == pytest.approx(1.0) and p95["sensitivity"] == pytest.approx(2 / 3)
    assert sensitivity_at_specificity(Y, RISK, 0.9)["sensitivity"] == pytest.approx(1.0)


def test_edges() -> None:
    assert choose_threshold(Y, RISK, 0.0) == pytest.approx(0.05)  # everything malignant
    assert operating_point(Y, RISK, choose_threshold(Y, RISK, 0.0))["sensitivity"] == 1.0
    # benign maximum is the largest risk: threshold just above it, nothing called malignant
    y = np.array([1, 0, 0])
    r = np.array([0.2, 0.3, 0.9])
    t = choose_threshold(y, r, 1.0)
    assert t > 0.9 and operating_point(y, r, t)["specificity"] == 1.0
    with pytest.raises(ValueError, match="no benign"):
        choose_threshold(np.array([1, 1]), np.array([0.2, 0.3]), 0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_threshold(Y, RISK, 1.5)
    assert threshold_key(0.9) == "spec@0.90"


def test_ties_exceed_target() -> None:
    # benign ties at the cut all fall below the threshold: 50 % asked, 75 % reached
    y = np.array([0, 0, 0, 0, 1])
    r = np.array([0.1, 0.2, 0.2, 0.6, 0.6])
    t = choose_threshold(y, r, 0.5)
    assert t == pytest.approx(0.4)
    point = operating_point(y, r, t)
    assert point["specificity"] == pytest.approx(0.75) and point["sensitivity"] == 1.0


@pytest.mark.parametrize("seed", range(20))
def test_random_reaches_target_minimally_and_monotonic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y = rng.integers(0, 2, n)
    y[0] = 0
    risk = np.round(rng.random(n) * 0.5 + 0.4 * y, 2)  # rounding makes ties
    targets = np.linspace(0.0, 1.0, 21)
    thresholds = [choose_threshold(y, risk, s) for s in targets]
    assert all(a <= b for a, b in zip(thresholds, thresholds[1:], strict=False))
    for s, t in zip(targets, thresholds, strict=True):
        spec = operating_point(y, risk, t)["specificity"]
        assert spec >= s - 1e-12
        lower = risk[risk < t]
        if len(lower):  # calling one more data value malignant would miss the target
            assert operating_point(y, risk, lower.max())["specificity"] < s
