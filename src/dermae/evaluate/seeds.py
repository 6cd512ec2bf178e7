"""Several seeds per recipe: is a recipe better than the reference on average over seeds?

One trained model is one draw of its recipe; at small budgets the spread over seeds can exceed
the effect being measured (BENCHMARKS section 22: three seeds of (b) span 0.04 balanced
accuracy). So each recipe is a list of models, one per seed, and the comparison is on the mean
over seeds, with two intervals:

- lesion: lesions resampled (the same resamples for every model), the seeds held fixed: the
  test-sampling noise of these particular models;
- lesion and seed: each resample also redraws, with replacement, the seeds within every
  recipe, so the interval holds the spread over seeds too (coarse with few seeds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dermae.evaluate.bootstrap import MetricFn, bootstrap_distribution


def _interval(values: np.ndarray) -> list[float] | None:
    valid = values[np.isfinite(values)]
    if len(valid) < 0.5 * len(values):
        return None
    return [float(v) for v in np.quantile(valid, [0.025, 0.975])]


def seed_paired(
    y: np.ndarray,
    groups: np.ndarray,
    recipes: dict[str, list[np.ndarray]],
    reference: str,
    metric_fn: MetricFn,
    resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """`recipe - reference` on the mean over each recipe's seeds, for every metric of
    `metric_fn`: the point difference, the lesion interval and the lesion-and-seed interval."""
    names = list(recipes)
    flat = [probs for name in names for probs in recipes[name]]
    dists = bootstrap_distribution(metric_fn, y, flat, groups, resamples, seed)
    points = [metric_fn(y, probs) for probs in flat]
    owner = np.repeat(np.arange(len(names)), [len(recipes[n]) for n in names])
    rng = np.random.default_rng(seed + 1)
    # seed redraws: for recipe r and resample b, which of its seeds (with replacement)
    redraw = {
        r: rng.integers(0, len(recipes[name]), size=(resamples, len(recipes[name])))
        for r, name in enumerate(names)
    }
    ref = names.index(reference)
    out: dict[str, dict[str, Any]] = {}
    for r, name in enumerate(names):
        if r == ref:
            continue
        per_metric = {}
        for metric in dists[0]:

            def stack(k: int, metric: str = metric) -> np.ndarray:
                return np.stack([dists[i][metric] for i in np.flatnonzero(owner == k)])  # [S, B]

            def point(k: int, metric: str = metric) -> float | None:
                values = [points[i].get(metric) for i in np.flatnonzero(owner == k)]
                return None if any(v is None for v in values) else float(np.mean(values))

            mine, theirs = stack(r), stack(ref)
            lesion = mine.mean(0) - theirs.mean(0)
            cols = np.arange(resamples)[None, :]
            both = mine[redraw[r].T, cols].mean(0) - theirs[redraw[ref].T, cols].mean(
                0
            )  # redrawn seeds, same lesion resample
            p_mine, p_theirs = point(r), point(ref)
            valid = lesion[np.isfinite(lesion)]
            per_metric[metric] = {
                "diff": None if p_mine is None or p_theirs is None else p_mine - p_theirs,
                "ci_lesion": _interval(lesion),
                "ci_lesion_and_seed": _interval(both),
                "frac_better": float((valid > 0).mean()) if len(valid) else None,
            }
        out[f"{name} - {reference}"] = per_metric
    return out
