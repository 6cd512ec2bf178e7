"""Percentile bootstrap confidence intervals, resampled by group (lesion id).

Images of one lesion are not independent: resampling images would pretend there are more
independent cases than there are and give intervals that are too narrow. So each resample
draws as many *groups* as there are, with replacement, and takes all images of each drawn group.

`metric_fn(y_true, probs) -> dict[str, float | None]` computes the scalars on one resample;
`dermae.metrics.scalar_metric_fn(...)` builds the standard one (numpy only, about
2 ms on 2,000 images, so 1,000 resamples take 2-3 s). A metric that is undefined on a resample
(None/NaN, e.g. an AUROC on a resample without malignant cases) is left out of that metric's
percentiles; if fewer than `min_valid` of the resamples define it, its interval is (None, None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], Mapping[str, float | None]]


@dataclass(frozen=True)
class GroupIndex:
    """Images sorted by group: group g owns order[start[g] : start[g] + count[g]]."""

    order: np.ndarray  # int [N]
    start: np.ndarray  # int [G]
    count: np.ndarray  # int [G]

    @property
    def num_groups(self) -> int:
        return len(self.start)

    @classmethod
    def build(cls, groups: Sequence[Any] | np.ndarray | None, n: int) -> GroupIndex:
        if groups is None:  # every image its own group: plain image-level bootstrap
            return cls(np.arange(n), np.arange(n), np.ones(n, dtype=np.int64))
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries but there are {n} samples")
        _, inverse, count = np.unique(groups, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(order, start, count)

    def indices(self, drawn: np.ndarray) -> np.ndarray:
        """Image indices for a draw of group ids (all images of each drawn group)."""
        lengths = self.count[drawn]
        out_start = np.cumsum(lengths) - lengths
        # position k of the output belongs to draw j: source = start[g_j] + (k - out_start[j])
        offsets = np.repeat(self.start[drawn] - out_start, lengths)
        return self.order[offsets + np.arange(lengths.sum())]


def _as_float(value: float | None) -> float:
    return np.nan if value is None else float(value)


def _draws(index: GroupIndex, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, index.num_groups, size=(n, index.num_groups))  # [n, G]


def bootstrap_distribution(
    metric_fn: MetricFn,
    y_true: np.ndarray,
    probs_list: Sequence[np.ndarray],
    groups: Sequence[Any] | np.ndarray | None,
    n: int = 1000,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Metric values on `n` group resamples, one dict name -> float [n] (NaN = undefined) per
    probability array; all arrays see the same resamples (that is what pairing means)."""
    y = np.asarray(y_true)
    index = GroupIndex.build(groups, len(y))
    draws = _draws(index, n, seed)
    values: list[dict[str, np.ndarray]] = [{} for _ in probs_list]
    for b in range(n):
        idx = index.indices(draws[b])
        for out, probs in zip(values, probs_list, strict=True):
            for name, v in metric_fn(y[idx], probs[idx]).items():
                if name not in out:
                    out[name] = np.full(n, np.nan)
                out[name][b] = _as_float(v)
    return values


def percentile_interval(
    values: np.ndarray, alpha: float = 0.05, min_valid: float = 0.5
) -> tuple[float | None, float | None]:
    """(1 - alpha) percentile interval of the finite values; (None, None) when fewer than
    `min_valid` of them are finite."""
    valid = values[np.isfinite(values)]
    if len(valid) == 0 or len(valid) < min_valid * len(values):
        return (None, None)
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def bootstrap_ci(
    metric_fn: MetricFn,
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[Any] | np.ndarray | None,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    min_valid: float = 0.5,
) -> dict[str, tuple[float | None, float | None]]:
    """(1 - alpha) percentile intervals for every scalar metric_fn returns: name -> (lo, hi).

    `groups` (e.g. lesion ids, one per image) sets the resampling unit; None = per image.
    """
    (dist,) = bootstrap_distribution(metric_fn, y_true, [np.asarray(probs)], groups, n, seed)
    return {name: percentile_interval(v, alpha, min_valid) for name, v in dist.items()}


def paired_bootstrap(
    metric_fn: MetricFn,
    y_true: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    groups: Sequence[Any] | np.ndarray | None,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    min_valid: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Difference B - A of two models scored on the same images and the same resamples.

    Returns name -> {"diff": B - A on all data, "ci": (lo, hi) of B - A, "frac_b_gt_a": share of
    resamples (where both are defined) with B > A, "n_valid": that number of resamples}.
    "B > A" is literal: for a lower-is-better metric such as ECE, B is better when it is small.
    """
    y = np.asarray(y_true)
    a = np.asarray(probs_a)
    b = np.asarray(probs_b)
    if a.shape != b.shape:
        raise ValueError(f"probs_a {a.shape} and probs_b {b.shape} must score the same images")
    point_a, point_b = metric_fn(y, a), metric_fn(y, b)
    dist_a, dist_b = bootstrap_distribution(metric_fn, y, [a, b], groups, n, seed)
    out: dict[str, dict[str, Any]] = {}
    for name in dist_a:
        diff = dist_b[name] - dist_a[name]
        valid = diff[np.isfinite(diff)]
        pa, pb = point_a.get(name), point_b.get(name)
        out[name] = {
            "diff": None if pa is None or pb is None else float(pb) - float(pa),
            "ci": percentile_interval(diff, alpha, min_valid),
            "frac_b_gt_a": float((valid > 0).mean()) if len(valid) else None,
            "n_valid": int(len(valid)),
        }
    return out
