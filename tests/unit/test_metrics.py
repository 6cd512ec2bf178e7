"""Metrics against hand-computed cases and scikit-learn / torchmetrics on random cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

from dermae.metrics import (
    average_ranks,
    check_inputs,
    classification_metrics,
    expected_calibration_error,
    flatten_metrics,
    reliability_bins,
    scalar_metric_fn,
    scalar_metrics,
)

NAMES3 = ["a", "b", "c"]
# Hand case: 3 classes, 6 samples. Predictions (arg-max): 0, 1, 1, 2, 2, 0.
Y3 = np.array([0, 0, 1, 1, 2, 2])
P3 = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.3, 0.6],
        [0.1, 0.1, 0.8],
        [0.5, 0.2, 0.3],
    ]
)


def random_case(n: int, c: int, seed: int, missing: tuple[int, ...] = ()) -> tuple:
    rng = np.random.default_rng(seed)
    allowed = [k for k in range(c) if k not in missing]
    y = rng.choice(allowed, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_hand_case_three_classes() -> None:
    m = classification_metrics(Y3, P3, NAMES3, malignant_index=[1, 2])
    assert m["n"] == 6 and m["n_malignant"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    # recall 1/2 for every class; precision 1/2 for every class -> F1 1/2
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(0.5)
    for name in NAMES3:
        pc = m["per_class"][name]
        assert pc["support"] == 2
        assert pc["sensitivity"] == pytest.approx(0.5)
        assert pc["specificity"] == pytest.approx(0.75)  # one false positive among 4 negatives
        assert pc["precision"] == pytest.approx(0.5)
    # OvR AUROC counted pair by pair: a 7/8, b 6/8, c 6.5/8 (one tie counted 1/2)
    assert m["per_class"]["a"]["auroc"] == pytest.approx(0.875)
    assert m["per_class"]["b"]["auroc"] == pytest.approx(0.75)
    assert m["per_class"]["c"]["auroc"] == pytest.approx(0.8125)
    assert m["macro_auroc"] == pytest.approx((0.875 + 0.75 + 0.8125) / 3)
    # risk = p_b + p_c = .3 .7 | .8 .9 .9 .5 (benign | malignant): 7 of 8 pairs ordered
    assert m["malignant_auroc"] == pytest.approx(0.875)
    assert m["malignant_classes"] == ["b", "c"]


def test_hand_case_operating_points() -> None:
    m = classification_metrics(Y3, P3, NAMES3, [1, 2], thresholds={"spec@0.50": 0.6})
    point = m["operating_points"]["spec@0.50"]
    # risk >= 0.6: benign .3 no, .7 yes; malignant .8 .9 .9 yes, .5 no
    assert (point["tp"], point["fn"], point["tn"], point["fp"]) == (3, 1, 1, 1)
    assert point["sensitivity"] == pytest.approx(0.75)
    assert point["specificity"] == pytest.approx(0.5)


def test_ece_hand_case() -> None:
    # 4 bins: (.75, 1] holds conf .9 (right), .9 (right), .8 (wrong): acc 2/3, conf .8667
    #         (.5, .75] holds conf .6 (right), .6 (wrong): acc 1/2, conf .6
    y = np.array([0, 0, 0, 0, 0])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    expected = 3 / 5 * abs(2 / 3 - 2.6 / 3) + 2 / 5 * abs(0.5 - 0.6)
    assert expected == pytest.approx(0.16)
    assert expected_calibration_error(y, p, n_bins=4) == pytest.approx(expected)
    bins = reliability_bins(y, p, n_bins=4)
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 3])
    assert np.isnan(bins["accuracy"][0])


def test_ece_bin_edges_are_right_closed() -> None:
    # confidence exactly 0.5 belongs to (0.25, 0.5], exactly 1.0 to the last bin
    y = np.array([0, 0])
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_array_equal(reliability_bins(y, p, 4)["count"], [0, 1, 0, 1])
    assert expected_calibration_error(y, p, 4) == pytest.approx(0.5 * 0.5 + 0.5 * 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn_and_torchmetrics(seed: int) -> None:
    y, p = random_case(300, 7, seed)
    names = list("abcdefg")
    m = classification_metrics(y, p, names, [0, 1, 4])
    pred = p.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    y_mal = np.isin(y, [0, 1, 4])
    assert m["malignant_auroc"] == pytest.approx(roc_auc_score(y_mal, p[:, [0, 1, 4]].sum(1)))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    for c, name in enumerate(names):
        pc = m["per_class"][name]
        assert pc["sensitivity"] == pytest.approx(np.mean(pred[y == c] == c))
        assert pc["specificity"] == pytest.approx(np.mean(pred[y != c] != c))
        assert pc["support"] == int((y == c).sum())
    tm = multiclass_calibration_error(
        torch.tensor(p), torch.tensor(y), num_classes=7, n_bins=15, norm="l1"
    )
    assert m["ece"] == pytest.approx(float(tm), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_fast_scalars_match_full_report(seed: int) -> None:
    # includes ties (probabilities drawn from a small pool of rows) and a missing class
    rng = np.random.default_rng(seed)
    y, pool = random_case(12, 5, seed)
    p = pool[rng.integers(0, 12, 200)]
    y = rng.choice([0, 1, 2, 4], 200)  # class 3 absent
    thresholds = {"spec@0.90": 0.45, "spec@0.95": 0.6}
    full = flatten_metrics(classification_metrics(y, p, list("abcde"), [1, 3], thresholds))
    fast = scalar_metrics(y, p, [1, 3], thresholds)
    assert fast.keys() == full.keys()
    for key in full:
        assert fast[key] == pytest.approx(full[key], abs=1e-12), key
    assert scalar_metric_fn([1, 3], thresholds)(y, p) == fast


def test_missing_class_is_null_and_excluded() -> None:
    y, p = random_case(200, 7, 1, missing=(3,))
    m = classification_metrics(y, p, list("abcdefg"), [0, 1, 4])
    assert m["per_class"]["d"]["auroc"] is None
    assert "no positive" in m["per_class"]["d"]["auroc_note"]
    assert m["per_class"]["d"]["sensitivity"] is None
    assert m["per_class"]["d"]["support"] == 0
    assert "d" not in m["macro_auroc_classes"]
    present = [c for c in range(7) if c != 3]
    expected = np.mean([roc_auc_score(y == c, p[:, c]) for c in present])
    assert m["macro_auroc"] == pytest.approx(expected)


def test_only_two_classes_present() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.1, 0.2, 0.7]])
    m = classification_metrics(y, p, NAMES3, [1])
    assert m["macro_auroc_classes"] == ["a", "b"]
    # a: positives .8 .4 above negatives .3 .1 -> 1; b: positives .6 .2 vs .1 .5 -> 3/4
    assert m["macro_auroc"] == pytest.approx((1.0 + 0.75) / 2)
    assert m["per_class"]["c"]["auroc"] is None
    # class c predicted once but never true: counts in macro F1 (scikit-learn's label set)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert m["malignant_auroc"] == pytest.approx(0.75)


def test_all_one_class() -> None:
    y = np.array([2, 2, 2])
    p = np.array([[0.1, 0.1, 0.8], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    m = classification_metrics(y, p, NAMES3, [1, 2])
    assert m["macro_auroc"] is None and "fewer than two" in m["macro_auroc_note"]
    assert m["malignant_auroc"] is None and "no negative" in m["malignant_auroc_note"]
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["specificity"] is None
    fast = scalar_metrics(y, p, [1, 2])
    assert fast["macro_auroc"] is None and fast["malignant_auroc"] is None


def test_bad_inputs_name_the_row() -> None:
    p = P3.copy()
    p[4] = [0.5, 0.1, 0.1]
    with pytest.raises(ValueError, match="row 4 sums to 0.7"):
        classification_metrics(Y3, p, NAMES3, [2])
    with pytest.raises(ValueError, match="row 0 has negative"):
        check_inputs([0], [[2.0, -1.0]])
    with pytest.raises(ValueError, match="3 class names"):
        classification_metrics(Y3, P3[:, :2] / P3[:, :2].sum(1, keepdims=True), NAMES3, [1])
    with pytest.raises(ValueError, match="row 1 has label 5"):
        check_inputs([0, 5], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="integer class indices"):
        check_inputs(["a"], [[1.0]])
    with pytest.raises(ValueError, match="NaN"):
        check_inputs([0], [[np.nan, 1.0]])


def test_average_ranks_match_scipy() -> None:
    rng = np.random.default_rng(0)
    x = np.round(rng.random((300, 6)), 1)  # heavy ties
    x[:, 0] = 0.5  # one column all tied
    np.testing.assert_array_equal(average_ranks(x), rankdata(x, axis=0))
    np.testing.assert_array_equal(
        average_ranks(np.array([[3.0], [1.0], [3.0]])), [[2.5], [1], [2.5]]
    )


def test_report_is_strict_json() -> None:
    y, p = random_case(50, 7, 9, missing=(3,))
    m = classification_metrics(y, p, list("abcdefg"), [0, 1, 4], {"spec@0.90": 0.5})
    assert json.loads(json.dumps(m, allow_nan=False)) == m
