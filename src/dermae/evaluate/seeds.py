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

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from dermae.evaluate.bootstrap import MetricFn, bootstrap_distribution, percentile_interval


def recipe_argument(text: str) -> tuple[str, list[Path]]:
    """`NAME=folder,folder,...` (one model folder per seed), as the seed scripts take it."""
    name, sep, folders = text.partition("=")
    paths = [Path(f) for f in folders.split(",") if f]
    if not sep or not name or not paths:
        raise argparse.ArgumentTypeError(f"expected NAME=folder,folder,..., got '{text}'")
    return name, paths


def _interval(values: np.ndarray) -> list[float] | None:
    lo, hi = percentile_interval(values)
    return None if lo is None else [lo, hi]


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
    bounds = np.cumsum([0] + [len(recipes[n]) for n in names])
    members = {n: range(bounds[i], bounds[i + 1]) for i, n in enumerate(names)}  # into flat
    rng = np.random.default_rng(seed + 1)
    # seed redraws: for each recipe and resample, which of its seeds (with replacement); drawn
    # [B, S] and used [S, B], the order the committed results were made with
    redraw = {
        n: rng.integers(0, len(recipes[n]), size=(resamples, len(recipes[n]))).T for n in names
    }
    cols = np.arange(resamples)[None, :]

    def over_seeds(name: str, metric: str) -> tuple[np.ndarray, np.ndarray, float | None]:
        """Mean over seeds per resample (seeds fixed, seeds redrawn) and on all data."""
        values = np.stack([dists[i][metric] for i in members[name]])  # [S, B]
        point = [points[i].get(metric) for i in members[name]]
        mean = None if any(v is None for v in point) else float(np.mean(point))
        return values.mean(0), values[redraw[name], cols].mean(0), mean

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == reference:
            continue
        per_metric = {}
        for metric in dists[0]:
            fixed, redrawn, point = over_seeds(name, metric)
            ref_fixed, ref_redrawn, ref_point = over_seeds(reference, metric)
            lesion = fixed - ref_fixed
            valid = lesion[np.isfinite(lesion)]
            per_metric[metric] = {
                "diff": None if point is None or ref_point is None else point - ref_point,
                "ci_lesion": _interval(lesion),
                "ci_lesion_and_seed": _interval(redrawn - ref_redrawn),
                "frac_better": float((valid > 0).mean()) if len(valid) else None,
            }
        out[f"{name} - {reference}"] = per_metric
    return out
