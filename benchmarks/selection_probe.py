"""Checkpoint choice on a finished run: best-by-validation against the last step.

The loop keeps two sets of weights per classifier stage: `<stage>/model` (the best validation
balanced accuracy among the evaluations) and `<stage>/train/checkpoint` (the last step). The
training is the same either way, so one run measures both rules. This scores (b) and the
student under each rule on the test split and pairs them:

    python benchmarks/selection_probe.py runs/demo -c configs/demo.yaml \
        --out benchmarks/results/demo_selection_seed0.json

It writes `<run>/selection_probe/<model>/` (evaluations, the last-step model folders) and the
summary JSON. Last-step thresholds are chosen on validation, like every model's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from dermae.classify.common import target_view
from dermae.classify.model import load_classifier
from dermae.classify.thresholds import attach_thresholds
from dermae.classify.trainer import SELECT_METRIC
from dermae.config import Config, load_config
from dermae.data.prepared import PreparedData, load_prepared
from dermae.engine.checkpoint import load_weights, save_model
from dermae.engine.loop import METRICS_FILE
from dermae.evaluate.paired import REFERENCE, paired_against_reference
from dermae.evaluate.run import evaluate_model

STAGES = {"b": "baseline", "d": "student"}
KEYS = ("balanced_accuracy", "malignant_auroc", "macro_auroc")


def last_step_model(
    cfg: Config, prepared: PreparedData, run_dir: Path, stage: str, out: Path
) -> Path:
    """`<stage>/model`'s config with the last checkpoint's weights and val thresholds; its
    `selected` entry is the one `train.select: last` would have written."""
    model, config = load_classifier(run_dir / stage / "model")
    checkpoint = run_dir / stage / "train" / "checkpoint"
    load_weights(checkpoint, model.net)
    model.eval()
    view = target_view(prepared, cfg.data.label)
    val_set = prepared.dataset(prepared.rows("val"))
    extra = attach_thresholds(model, val_set, view, cfg.evaluate.specificities)
    last = _last_eval(checkpoint.parent / METRICS_FILE)
    return save_model(out, model.net, {**config, **extra, "selected": {"rule": "last", **last}})


def _last_eval(metrics: Path) -> dict[str, Any]:
    """The final validation record of a training log, as the loop's `selected` holds it."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    final = [r for r in records if f"val_{SELECT_METRIC}" in r][-1]
    return {"step": final["step"], "score": final[f"val_{SELECT_METRIC}"], "metric": SELECT_METRIC}


def _diffs(comparisons: dict[str, Any]) -> dict[str, Any]:
    (entry,) = comparisons.values()
    return {k: {"diff": entry[k]["diff"], "ci": entry[k]["ci"]} for k in KEYS if k in entry}


def probe(cfg: Config, run_dir: Path) -> dict[str, Any]:
    out = run_dir / "selection_probe"
    prepared = load_prepared(run_dir, with_synthetic=False)
    folders = {}
    for key, stage in STAGES.items():
        folders[f"{key}_best"] = run_dir / stage / "model"
        folders[f"{key}_last"] = last_step_model(
            cfg, prepared, run_dir, stage, out / f"{key}_last_model"
        )
    results, predictions = {}, {}
    for name, folder in folders.items():
        results[name] = evaluate_model(
            folder, prepared, cfg.evaluate.split, out / name, cfg.evaluate, cfg.seed
        )
        predictions[name] = pd.read_csv(out / name / "predictions.csv")

    def paired(reference: str, other: str) -> dict[str, Any]:
        frames = {REFERENCE: predictions[reference], other: predictions[other]}
        return _diffs(
            paired_against_reference(
                frames,
                prepared.malignant_index,
                cfg.evaluate.ece_bins,
                cfg.evaluate.bootstrap,
                cfg.seed,
            )
        )

    best_steps = {
        key: json.loads((run_dir / stage / "model" / "config.json").read_text())["best"]
        for key, stage in STAGES.items()
    }
    return {
        "run_dir": str(run_dir),
        "seeds": {key: cfg_seed(cfg, stage) for key, stage in STAGES.items()},
        "best_by_validation": best_steps,
        "test": {name: {k: r["scalars"].get(k) for k in KEYS} for name, r in results.items()},
        "d_minus_b": {"best": paired("b_best", "d_best"), "last": paired("b_last", "d_last")},
        "last_minus_best": {key: paired(f"{key}_best", f"{key}_last") for key in STAGES},
    }


def cfg_seed(cfg: Config, stage: str) -> int | None:
    section = cfg.baseline if stage == "baseline" else cfg.distill
    return section.train.seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    summary = probe(cfg, args.run_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(
        json.dumps({k: summary[k] for k in ("best_by_validation", "test", "d_minus_b")}, indent=2)
    )


if __name__ == "__main__":
    main()
