"""Cost of lesion-grouped bootstrap CIs on a HAM10000-sized test split (~2,000 images).

    PYTHONPATH=src python benchmarks/bench_bootstrap.py [--data ../shared/data/ham10000]

Scores are simulated (class-informative random logits); only the lesion structure and class
mix come from the real labels, since the cost depends on those and not on the model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from dermae.config import default_data_root
from dermae.data.classes import HAM10000_CLASSES
from dermae.evaluate.bootstrap import bootstrap_ci, paired_bootstrap
from dermae.metrics import classification_metrics, scalar_metric_fn


def simulated_probs(y: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(size=(len(y), len(HAM10000_CLASSES)))
    logits[np.arange(len(y)), y] += strength
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=default_data_root())
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    labels = pd.read_csv(f"{args.data}/labels.csv")
    rng = np.random.default_rng(0)
    lesions = labels["lesion_id"].unique()
    test = labels[labels["lesion_id"].isin(rng.choice(lesions, len(lesions) // 5, replace=False))]
    index = {c: i for i, c in enumerate(HAM10000_CLASSES)}
    y = test["diagnosis"].map(index).to_numpy()
    groups = test["lesion_id"].to_numpy()
    pa, pb = simulated_probs(y, 1.0, rng), simulated_probs(y, 1.5, rng)
    malignant = [index["akiec"], index["bcc"], index["mel"]]
    fn = scalar_metric_fn(malignant, {"spec@0.90": 0.5, "spec@0.95": 0.6})
    t = time.perf_counter()
    bootstrap_ci(fn, y, pa, groups, n=args.resamples)
    single = time.perf_counter() - t
    t = time.perf_counter()
    paired_bootstrap(fn, y, pa, pb, groups, n=args.resamples)
    paired = time.perf_counter() - t
    t = time.perf_counter()
    classification_metrics(y, pa, list(HAM10000_CLASSES), malignant)
    full = time.perf_counter() - t
    print(f"{len(y)} images, {len(set(groups))} lesions, {args.resamples} resamples")
    print(f"bootstrap_ci: {single:.2f} s; paired_bootstrap: {paired:.2f} s")
    print(f"one full scikit-learn report: {full * 1000:.1f} ms (x{args.resamples} if used inside)")


if __name__ == "__main__":
    main()
