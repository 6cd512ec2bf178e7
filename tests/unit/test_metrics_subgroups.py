"""Subgroup table (sex, age band, site) on a hand-made evaluation set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dermae.metrics import age_band, subgroup_metrics


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "<30"),
        (29.9, "<30"),
        (30, "30-44"),
        (44, "30-44"),
        (45, "45-59"),
        (60, "60-74"),
        (74.5, "60-74"),
        (75, "75+"),
        (85.0, "75+"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        ("", "unknown"),
        ("n/a", "unknown"),
        (-1, "unknown"),
    ],
)
def test_age_band(age, band: str) -> None:
    assert age_band(age) == band


def test_subgroups_hand_case() -> None:
    # classes a, b (malignant); predictions by arg-max: 0, 1, 1, 0, 1, 0
    rows = pd.DataFrame(
        {
            "sex": ["male", "male", "female", "female", "male", None],
            "age": [25, 50, 50, 80, np.nan, 33],
            "site": ["back", "face", "back", "back", "face", "unknown"],
        }
    )
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.45, 0.55], [0.6, 0.4]])
    table = subgroup_metrics(rows, y, p, malignant_index=[1], threshold=0.5)
    by = {(r["attribute"], r["group"]): r for r in table}
    assert [g for a, g in by if a == "sex"] == ["female", "male", "unknown"]
    assert [g for a, g in by if a == "age_band"] == ["<30", "30-44", "45-59", "75+", "unknown"]

    male = by[("sex", "male")]  # rows 0, 1, 4: y 0 1 1, pred 0 1 1
    assert (male["n"], male["n_malignant"]) == (3, 2)
    assert male["balanced_accuracy"] == pytest.approx(1.0)
    assert male["malignant_auroc"] == pytest.approx(1.0)
    assert male["malignant_sensitivity"] == pytest.approx(1.0)
    assert male["malignant_specificity"] == pytest.approx(1.0)

    female = by[("sex", "female")]  # rows 2, 3: y 0 1, pred 1 0 -> all wrong
    assert female["balanced_accuracy"] == pytest.approx(0.0)
    assert female["malignant_auroc"] == pytest.approx(0.0)  # risk .6 (benign) > .3 (malignant)
    assert female["malignant_sensitivity"] == pytest.approx(0.0)

    back = by[("site", "back")]  # rows 0, 2, 3: y 0 0 1; pred 0 1 0; recall a 1/2, b 0
    assert back["n"] == 3
    assert back["balanced_accuracy"] == pytest.approx(0.25)
    assert back["malignant_specificity"] == pytest.approx(0.5)

    unknown_sex = by[("sex", "unknown")]  # one benign image: AUROC undefined, no sensitivity
    assert unknown_sex["malignant_auroc"] is None
    assert unknown_sex["malignant_sensitivity"] is None
    assert sum(r["n"] for r in table if r["attribute"] == "site") == 6


def test_subgroups_errors() -> None:
    rows = pd.DataFrame({"sex": ["male"]})
    with pytest.raises(ValueError, match="'age' or 'age_band'"):
        subgroup_metrics(rows, [0], [[1.0, 0.0]], [1])
    with pytest.raises(ValueError, match="'site' is not a column"):
        subgroup_metrics(rows, [0], [[1.0, 0.0]], [1], by=("site",))
    with pytest.raises(ValueError, match="align"):
        subgroup_metrics(rows, [0, 1], [[1.0, 0.0], [0.0, 1.0]], [1], by=("sex",))
