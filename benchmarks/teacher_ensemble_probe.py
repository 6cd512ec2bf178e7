"""How strong can a teacher get from models a run already has? Ensembles of saved classifiers.

Each member scores the validation and test splits once; an ensemble's prediction is the mean of
its members' log-probabilities, as `dermae.classify.ensemble` computes it. No training.

    python benchmarks/teacher_ensemble_probe.py runs/demo \
        --member vit=runs/demo/teacher/model --member b0=runs/demo/baseline/model \
        --member b1=runs/demo-seed-1/baseline/model \
        --ensemble vit+b0 --ensemble b0+b1 --ensemble vit+b0+b1 \
        --out benchmarks/results/demo_teacher_ensembles.json

Validation is the split a recipe may choose a teacher on; test is reported beside it. Each
ensemble's entry also holds its per-class sensitivity on both splits. A single member is an
ensemble of one (`--ensemble b0`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from dermae.classify.common import predict_probs
from dermae.classify.model import load_classifier
from dermae.data.prepared import load_prepared
from dermae.evaluate.run import model_targets
from dermae.metrics import classification_metrics, flatten_metrics

SPLITS = ("val", "test")
KEYS = ("balanced_accuracy", "malignant_auroc", "macro_auroc")


def member_log_probs(folder: Path, prepared: Any) -> dict[str, np.ndarray]:
    model, config = load_classifier(folder)
    prepared = prepared.at_size(int(config["image_size"]))  # same rows, at the member's size
    out = {}
    for split in SPLITS:
        rows = prepared.rows(split).reset_index(drop=True)
        probs = predict_probs(model, prepared.dataset(rows), 256, desc=f"{folder} {split}")
        out[split] = np.log(np.clip(probs, 1e-12, None))
    return out


def scores(log_probs: list[np.ndarray], targets: np.ndarray, prepared: Any) -> dict[str, float]:
    mean = np.mean(log_probs, axis=0)
    probs = np.exp(mean - mean.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    report = classification_metrics(
        targets, probs, prepared.class_names, prepared.malignant_index, {}, 15
    )
    flat = flatten_metrics(report)
    # Per-class recall: with 11 df and 16 vasc validation images, one image moves BMA by 0.01.
    recall = {name: entry["sensitivity"] for name, entry in report["per_class"].items()}
    return {**{k: float(flat[k]) for k in KEYS}, "sensitivity_per_class": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run whose data/ is scored")
    parser.add_argument("--member", action="append", required=True, help="NAME=classifier folder")
    parser.add_argument("--ensemble", action="append", required=True, help="NAME+NAME+...")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    prepared = load_prepared(args.run_dir, with_synthetic=False)
    members = dict(item.split("=", 1) for item in args.member)
    targets = {
        split: model_targets(prepared.rows(split).reset_index(drop=True), prepared.class_names)[0]
        for split in SPLITS
    }
    cached = {name: member_log_probs(Path(folder), prepared) for name, folder in members.items()}
    results = {}
    for combo in args.ensemble:
        names = combo.split("+")
        unknown = [n for n in names if n not in cached]
        if unknown:
            raise SystemExit(f"--ensemble {combo}: no --member named {unknown}")
        results[combo] = {
            split: scores([cached[n][split] for n in names], targets[split], prepared)
            for split in SPLITS
        }
        line = "  ".join(
            f"{split} BMA {results[combo][split]['balanced_accuracy']:.3f} "
            f"mal-AUROC {results[combo][split]['malignant_auroc']:.3f}"
            for split in SPLITS
        )
        print(f"{combo:>24}: {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"members": members, "ensembles": results}, indent=2))


if __name__ == "__main__":
    main()
