"""Group (lesion) bootstrap: intervals, pairing, and that the resampling unit is the group."""

from __future__ import annotations

import numpy as np
import pytest

from dermae.evaluate.bootstrap import (
    GroupIndex,
    bootstrap_ci,
    bootstrap_distribution,
    paired_bootstrap,
)
from dermae.metrics import scalar_metric_fn, scalar_metrics

MAL = [0, 1, 4]


def case(n: int, seed: int, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(7, n, p=[0.05, 0.08, 0.11, 0.04, 0.12, 0.55, 0.05])
    logits = rng.normal(size=(n, 7))
    logits[np.arange(n), y] += strength
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_group_index_takes_whole_groups() -> None:
    groups = np.array(["x", "y", "x", "z", "y", "x"])
    index = GroupIndex.build(groups, 6)
    assert index.num_groups == 3
    # unique order: x (rows 0 2 5), y (1 4), z (3)
    idx = index.indices(np.array([2, 0, 0]))
    np.testing.assert_array_equal(idx, [3, 0, 2, 5, 0, 2, 5])
    plain = GroupIndex.build(None, 4)
    np.testing.assert_array_equal(plain.indices(np.array([3, 3, 1])), [3, 3, 1])
    with pytest.raises(ValueError, match="groups has 2 entries"):
        GroupIndex.build(["a", "b"], 3)


def test_ci_contains_point_and_is_reproducible() -> None:
    y, p = case(600, 0)
    groups = np.arange(600) // 2
    fn = scalar_metric_fn(MAL, {"spec@0.90": 0.5})
    ci = bootstrap_ci(fn, y, p, groups, n=200, seed=3)
    point = fn(y, p)
    assert ci.keys() == point.keys()
    for name, (lo, hi) in ci.items():
        assert lo <= point[name] <= hi, name
        assert hi - lo > 0, name
    assert bootstrap_ci(fn, y, p, groups, n=200, seed=3) == ci
    assert bootstrap_ci(fn, y, p, groups, n=200, seed=4) != ci


def test_resampling_is_by_group() -> None:
    # 150 lesions x 8 identical images each. Group resampling must act exactly like resampling
    # the 150 distinct lesions once each; image resampling would see 1,200 "independent" cases.
    y_lesion, p_lesion = case(150, 1)
    reps = 8
    y = np.repeat(y_lesion, reps)
    p = np.repeat(p_lesion, reps, axis=0)
    groups = np.repeat([f"HAM_{i:04d}" for i in range(150)], reps)  # sorted like np.unique
    fn = scalar_metric_fn(MAL)

    by_group = bootstrap_ci(fn, y, p, groups, n=300, seed=0)
    per_lesion = bootstrap_ci(fn, y_lesion, p_lesion, None, n=300, seed=0)
    by_image = bootstrap_ci(fn, y, p, None, n=300, seed=0)
    for name in by_group:
        np.testing.assert_allclose(by_group[name], per_lesion[name], rtol=0, atol=1e-12)
        width_group = by_group[name][1] - by_group[name][0]
        width_image = by_image[name][1] - by_image[name][0]
        # sqrt(8) ~ 2.8 times narrower in theory; demand clearly narrower
        assert width_image < 0.6 * width_group, name


def test_paired_identical_models_is_zero() -> None:
    y, p = case(400, 2)
    groups = np.arange(400) // 3
    out = paired_bootstrap(scalar_metric_fn(MAL), y, p, p.copy(), groups, n=200)
    for name, r in out.items():
        assert r["diff"] == 0.0, name
        assert r["ci"] == (0.0, 0.0), name
        assert r["frac_b_gt_a"] == 0.0
        assert r["n_valid"] == 200


def test_paired_better_model_is_detected() -> None:
    y, p_a = case(800, 3, strength=0.5)
    _, p_b = case(800, 3, strength=2.0)  # same noise, stronger signal
    groups = np.arange(800) // 2
    out = paired_bootstrap(scalar_metric_fn(MAL), y, p_a, p_b, groups, n=300, seed=1)
    acc = out["accuracy"]
    expected = scalar_metrics(y, p_b, MAL)["accuracy"] - scalar_metrics(y, p_a, MAL)["accuracy"]
    assert acc["diff"] == pytest.approx(expected)
    assert acc["ci"][0] > 0 and acc["frac_b_gt_a"] == 1.0
    assert out["malignant_auroc"]["ci"][0] > 0
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(scalar_metric_fn(MAL), y, p_a, p_b[:10], groups)


def test_paired_uses_the_same_resamples() -> None:
    y, p_a = case(300, 4)
    _, p_b = case(300, 5)
    dist_a, dist_b = bootstrap_distribution(scalar_metric_fn(MAL), y, [p_a, p_b], None, 50, 7)
    (alone_a,) = bootstrap_distribution(scalar_metric_fn(MAL), y, [p_a], None, 50, 7)
    np.testing.assert_array_equal(dist_a["accuracy"], alone_a["accuracy"])
    assert not np.array_equal(dist_a["accuracy"], dist_b["accuracy"])


def test_undefined_metric_gives_none_interval() -> None:
    ids = np.arange(100)  # custom metric: "labels" are just image ids
    probs = np.ones((100, 1))

    def fn(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
        # "often" is defined only on resamples that hold image 0: 1 - 0.99^100 = 63 % of them
        return {"never": None, "often": 1.0 if (y_true == 0).any() else None}

    ci = bootstrap_ci(fn, ids, probs, None, n=400, min_valid=0.5)
    assert ci["never"] == (None, None)
    assert ci["often"] == (1.0, 1.0)
    assert bootstrap_ci(fn, ids, probs, None, n=400, min_valid=0.9)["often"] == (None, None)


def test_resamples_missing_a_class_leave_balanced_accuracy_undefined():
    from dermae.metrics import scalar_metric_fn

    y = np.array([0, 0, 1, 2])
    probs = np.tile([1.0, 0.0, 0.0], (4, 1))  # constant classifier: balanced accuracy 1/3
    fn = scalar_metric_fn([2], required_classes=[0, 1, 2])
    assert fn(y, probs)["balanced_accuracy"] == pytest.approx(1 / 3)
    assert fn(y[:3], probs[:3])["balanced_accuracy"] is None  # class 2 missing
    many = np.repeat(y, 10)  # 40 images: resamples keep all classes, the interval is exact
    ci = bootstrap_ci(fn, many, np.tile([1.0, 0.0, 0.0], (40, 1)), groups=None, n=200, seed=0)
    assert ci["balanced_accuracy"] == (pytest.approx(1 / 3), pytest.approx(1 / 3))
