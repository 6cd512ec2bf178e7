"""Splits: grouped (no lesion in two splits), stratified (exact per-class cut), seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dermae.data.errors import DataError
from dermae.data.splits import assign_splits, group_strata, subset_groups

# Lesions per class, like a shrunken HAM10000 (nv dominant, df rare).
LESIONS = {"akiec": 23, "bcc": 33, "bkl": 73, "df": 7, "mel": 61, "nv": 540, "vasc": 3}


def make_rows(lesions: dict[str, int] = LESIONS, seed: int = 0) -> pd.DataFrame:
    """1-4 images per lesion, rows in random order."""
    rng = np.random.default_rng(seed)
    records = []
    for dx, n in lesions.items():
        for j in range(n):
            for k in range(int(rng.integers(1, 5))):
                records.append(
                    {"image_id": f"{dx}{j}_{k}", "group_id": f"{dx}{j}", "diagnosis": dx}
                )
    rows = pd.DataFrame(records)
    return rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)


def test_no_lesion_is_in_two_splits() -> None:
    rows = make_rows()
    split = assign_splits(rows, 0.1, 0.2, seed=1)
    assert split.index.equals(rows.index)
    assert rows.assign(split=split).groupby("group_id")["split"].nunique().max() == 1
    assert set(split) == {"train", "val", "test"}


def test_stratified_cut_is_exact_per_class() -> None:
    rows = make_rows()
    split = assign_splits(rows, 0.1, 0.2, seed=0)
    lesions = rows.assign(split=split).drop_duplicates("group_id")
    counts = pd.crosstab(lesions["diagnosis"], lesions["split"])
    for dx, n in LESIONS.items():
        n_val = max(1, int(np.floor(n * 0.1 + 0.5)))
        n_test = max(1, int(np.floor(n * 0.2 + 0.5)))
        assert counts.at[dx, "val"] == n_val, dx
        assert counts.at[dx, "test"] == n_test, dx
        assert counts.at[dx, "train"] == n - n_val - n_test, dx
    # nv (540 lesions) lands on 70/10/20 exactly.
    assert counts.loc["nv"].to_dict() == {"test": 108, "train": 378, "val": 54}


def test_same_seed_same_split_any_row_order_other_seed_differs() -> None:
    rows = make_rows()
    a = assign_splits(rows, 0.1, 0.2, seed=7)
    shuffled = rows.sample(frac=1.0, random_state=3)
    b = assign_splits(shuffled, 0.1, 0.2, seed=7)
    assert a.equals(b.loc[a.index])
    c = assign_splits(rows, 0.1, 0.2, seed=8)
    assert not a.equals(c)


def test_small_classes() -> None:
    rows = make_rows({"a": 3, "b": 2, "c": 1, "d": 30})
    split = rows.assign(split=assign_splits(rows, 0.1, 0.2, seed=0)).drop_duplicates("group_id")
    counts = pd.crosstab(split["diagnosis"], split["split"]).reindex(
        columns=["train", "val", "test"], fill_value=0
    )
    assert counts.loc["a"].tolist() == [1, 1, 1]  # >= 3 groups: present in every split
    assert counts.loc["b"].tolist() == [1, 0, 1]
    assert counts.loc["c"].tolist() == [1, 0, 0]
    assert counts.loc["d"].tolist() == [21, 3, 6]


def test_empty_split_and_bad_fractions_are_errors() -> None:
    with pytest.raises(DataError, match="the val split is empty"):
        assign_splits(make_rows({"a": 2, "b": 1}), 0.1, 0.2)
    with pytest.raises(DataError, match="fractions"):
        assign_splits(make_rows(), 0.5, 0.5)
    with pytest.raises(DataError, match="fractions"):
        assign_splits(make_rows(), 0.0, 0.2)


def test_group_with_mixed_diagnoses_takes_its_majority() -> None:
    rows = pd.DataFrame(
        {
            "group_id": ["g1", "g1", "g1", "g2", "g2", "g3"],
            "diagnosis": ["nv", "nv", "mel", "nv", "mel", "nv"],
        }
    )
    # g2 ties 1:1 and goes to the rarer class, mel.
    assert group_strata(rows).to_dict() == {"g1": "nv", "g2": "mel", "g3": "nv"}


def test_subset_keeps_every_class_and_whole_lesions() -> None:
    rows = make_rows()
    sub = subset_groups(rows, 60, seed=0)
    per_class = sub.drop_duplicates("group_id")["diagnosis"].value_counts().to_dict()
    assert sum(per_class.values()) == 60
    assert set(per_class) == set(LESIONS)
    assert per_class["vasc"] == 3 and per_class["df"] == 3  # the floor of 3 per class
    assert per_class["nv"] == max(per_class.values())
    # Whole lesions: every image of a kept lesion is kept.
    kept = rows[rows["group_id"].isin(set(sub["group_id"]))]
    assert len(kept) == len(sub)
    assert subset_groups(rows, 60, seed=0).equals(sub)
    assert subset_groups(rows, 0).equals(rows)
    assert len(subset_groups(rows, 7).drop_duplicates("group_id")) == 7  # one per class
    with pytest.raises(DataError, match="smaller than the number of classes"):
        subset_groups(rows, 5)


def test_class_sampling_weights_interpolate_natural_to_balanced():
    from dermae.config import TrainConfig
    from dermae.data.classes import class_sampling_weights
    from dermae.engine.loop import epoch_indices

    targets = np.array([0, 0, 0, 0, 1])  # 4:1
    assert class_sampling_weights(targets, 0.0) == pytest.approx([1.0] * 5)
    assert class_sampling_weights(targets, 1.0) == pytest.approx([0.25] * 4 + [1.0])
    assert class_sampling_weights(targets, 0.5) == pytest.approx([0.5] * 4 + [1.0])
    # power 0.5 draws class 1 with probability 1 / (1 + 4 * 0.5) = 1/3 instead of 1/5.
    targets = np.array([0] * 400 + [1] * 100)
    weights = class_sampling_weights(targets, 0.5)
    order = epoch_indices(len(targets), TrainConfig(seed=0), 0, weights)
    assert np.mean(targets[order]) == pytest.approx(1 / 3, abs=0.05)
