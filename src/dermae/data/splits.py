"""Lesion-grouped, diagnosis-stratified, seeded train/val/test splits (and smoke-run subsets).

Why an own assignment instead of sklearn's StratifiedGroupKFold: k-fold only gives fractions of
1/k (70/10/20 would need two nested fold splits that round twice), it balances the class mix
only greedily, and it can leave a rare class (df: 73 lesions, or 3 lesions after `limit`) out of
a fold. Here each group (lesion) carries one stratum, its diagnosis, so the split is exact per
class: shuffle each class's groups with the seed and cut them at round(n * fraction), with at
least one group of the class in every split when the class has >= 3 groups. A whole group
always goes to one split, so no lesion can appear in two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dermae.data.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


def group_strata(rows: pd.DataFrame) -> pd.Series:
    """group_id -> the diagnosis that stratifies it.

    HAM10000 lesions have one diagnosis each; should a group mix diagnoses, its most common one
    wins, ties going to the rarer class so that rare classes are not under-counted."""
    class_size = rows["diagnosis"].value_counts()
    counts = rows.groupby(["group_id", "diagnosis"]).size().rename("n").reset_index()
    counts["rarity"] = counts["diagnosis"].map(class_size)
    counts = counts.sort_values(["group_id", "n", "rarity"], ascending=[True, False, True])
    return counts.drop_duplicates("group_id").set_index("group_id")["diagnosis"]


def _groups_by_class(rows: pd.DataFrame) -> dict[str, list[str]]:
    strata = group_strata(rows)
    return {c: sorted(g.index) for c, g in strata.groupby(strata, sort=True)}


def _cut_sizes(n: int, val_frac: float, test_frac: float) -> tuple[int, int, int]:
    """(train, val, test) group counts for a class of n groups."""
    if n >= 3:
        n_val = max(1, int(np.floor(n * val_frac + 0.5)))
        n_test = max(1, int(np.floor(n * test_frac + 0.5)))
        while n - n_val - n_test < 1:  # keep at least one group to train on
            if n_test >= n_val and n_test > 1:
                n_test -= 1
            else:
                n_val -= 1
        return n - n_val - n_test, n_val, n_test
    if n == 2:  # too few for all three: evaluate on one, train on the other
        return 1, 0, 1
    return n, 0, 0


def assign_splits(
    rows: pd.DataFrame, val_frac: float = 0.1, test_frac: float = 0.2, seed: int = 0
) -> pd.Series:
    """Split name ("train" / "val" / "test") for every row, aligned to `rows.index`."""
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise DataError(
            f"split fractions val={val_frac}, test={test_frac} are invalid: each must be in "
            "(0, 1) and their sum below 1 (set data.val_frac / data.test_frac)"
        )
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    # Groups are sorted before shuffling and classes visited in sorted order, so the result
    # depends only on the seed and the set of groups, never on row order.
    for _, groups in sorted(_groups_by_class(rows).items()):
        order = [groups[i] for i in rng.permutation(len(groups))]
        n_train, n_val, _ = _cut_sizes(len(order), val_frac, test_frac)
        for i, group in enumerate(order):
            split_of[group] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    split = rows["group_id"].map(split_of)
    for name in SPLIT_NAMES:
        if not (split == name).any():
            raise DataError(
                f"the {name} split is empty ({rows['group_id'].nunique()} groups in all): use "
                "more data, a larger data.limit, or larger split fractions"
            )
    return split.rename("split")


def subset_groups(rows: pd.DataFrame, limit: int, seed: int = 0) -> pd.DataFrame:
    """Keep a stratified random subset of `limit` groups (all their rows), keeping every class.

    Each class first gets min(3, its groups) so it can reach all three splits (or one group each
    when `limit` is too small for that); the rest is shared in proportion to class size."""
    by_class = _groups_by_class(rows)
    total = sum(len(g) for g in by_class.values())
    if limit <= 0 or limit >= total:
        return rows
    if limit < len(by_class):
        raise DataError(
            f"data.limit={limit} is smaller than the number of classes ({len(by_class)}); "
            f"use at least {len(by_class)} (or {3 * len(by_class)} to have every class in every "
            "split)"
        )
    names = sorted(by_class)
    size = np.array([len(by_class[c]) for c in names])
    quota = np.minimum(size, 3)
    if quota.sum() > limit:
        quota = np.minimum(size, 1)
    room = size - quota
    extra = limit - quota.sum()
    # Largest-remainder share of the rest, capped by what each class has left.
    while extra > 0 and room.sum() > 0:
        share = extra * room / room.sum()
        step = np.minimum(np.floor(share).astype(int), room)
        if step.sum() == 0:
            step[np.argmax(share - np.floor(share) + (room > 0))] = 1
        quota += step
        room -= step
        extra -= int(step.sum())
    rng = np.random.default_rng(seed)
    keep: set[str] = set()
    for name, k in zip(names, quota, strict=True):
        groups = by_class[name]
        keep.update(groups[i] for i in rng.choice(len(groups), size=int(k), replace=False))
    return rows[rows["group_id"].isin(keep)]
