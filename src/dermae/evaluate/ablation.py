"""`dermae ablate`: is DerMAE better than what a user would do without it? Measured.

Same student architecture, same training budget (`distill.train`), same split:
  (a) real data, plain cross-entropy             — what a user does without dermae
  (b) real data, the simple fix (weighted CE or a class-balanced sampler)
  (c) real + synthetic images, plain cross-entropy
  (d) real + synthetic, distilled from the MAE teacher — DerMAE (the pipeline's student)
plus the teacher itself. Every model is scored on the test split with lesion-bootstrap
CIs, and (d) is compared with (a) and (b) by a paired bootstrap over the same resamples.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermae.classify.baseline import train_baseline
from dermae.config import BaselineConfig, Config
from dermae.data.prepared import load_prepared
from dermae.evaluate.bootstrap import paired_bootstrap
from dermae.evaluate.metrics import scalar_metric_fn
from dermae.evaluate.report import metrics_table
from dermae.evaluate.run import evaluate_model

HEADLINE = {
    "balanced_accuracy": "balanced accuracy",
    "malignant_sensitivity[spec@0.90]": "malignant sensitivity @ 90% spec.",
    "malignant_auroc": "malignant AUROC",
    "macro_auroc": "macro AUROC",
    "ece": "ECE (lower is better)",
}
VARIANTS = {
    "a_real_ce": "(a) real, plain CE",
    "b_real_balanced": "(b) real, class-balanced",
    "c_real_synth": "(c) real + synthetic",
    "d_dermae": "(d) DerMAE student",
    "teacher": "MAE teacher",
}


def _student_recipe(cfg: Config, loss: str) -> BaselineConfig:
    """The student's architecture and budget, trained without a teacher."""
    return BaselineConfig(
        model=cfg.distill.model,
        loss=loss,
        augment=True,
        drop_rate=cfg.baseline.drop_rate,
        train=cfg.distill.train,
    )


def _simple_fix_loss(cfg: Config) -> str:
    return cfg.baseline.loss if cfg.baseline.loss != "ce" else "weighted_ce"


def _variant_models(cfg: Config, run_dir: Path, resume: bool) -> dict[str, Path]:
    models: dict[str, Path] = {}
    plain = _student_recipe(cfg, "ce")
    models["a_real_ce"] = train_baseline(cfg, run_dir, "ablate/a_real_ce", plain, resume=resume)
    simple = _student_recipe(cfg, _simple_fix_loss(cfg))
    if simple == cfg.baseline and (run_dir / "baseline/model/model.safetensors").exists():
        models["b_real_balanced"] = run_dir / "baseline/model"  # same recipe: reuse, don't retrain
    else:
        models["b_real_balanced"] = train_baseline(
            cfg, run_dir, "ablate/b_real_balanced", simple, resume=resume
        )
    synth_rows = load_prepared(run_dir).manifest["source"].eq("synthetic").sum()
    if synth_rows:
        models["c_real_synth"] = train_baseline(
            cfg, run_dir, "ablate/c_real_synth", plain, include_synthetic=True, resume=resume
        )
    for name, folder in (("d_dermae", "student/model"), ("teacher", "teacher/model")):
        if (run_dir / folder / "model.safetensors").exists():
            models[name] = run_dir / folder
    return models


def _probs(predictions: pd.DataFrame) -> np.ndarray:
    return predictions[[c for c in predictions.columns if c.startswith("p_")]].to_numpy()


def ablate(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    run_dir = Path(run_dir)
    out = run_dir / "ablate"
    prepared = load_prepared(run_dir, with_synthetic=False)
    models = _variant_models(cfg, run_dir, resume)
    results: dict[str, dict[str, Any]] = {}
    predictions: dict[str, pd.DataFrame] = {}
    for name, model_dir in models.items():
        results[name] = evaluate_model(
            model_dir, prepared, cfg.evaluate.split, out / "eval" / name, cfg.evaluate, cfg.seed
        )
        predictions[name] = pd.read_csv(out / "eval" / name / "predictions.csv")

    comparisons: dict[str, Any] = {}
    if "d_dermae" in predictions:
        d = predictions["d_dermae"]
        for base in ("a_real_ce", "b_real_balanced"):
            other = predictions[base]
            if list(other["image_id"]) != list(d["image_id"]):
                raise RuntimeError(f"{base} and d_dermae were scored on different images")
            # Threshold-free metrics only: each model has its own validation thresholds, so a
            # paired operating-point difference would mix two thresholds.
            fn = scalar_metric_fn(prepared.malignant_index, None, cfg.evaluate.ece_bins)
            comparisons[f"d_dermae - {base}"] = paired_bootstrap(
                fn,
                d["target"].to_numpy(),
                _probs(other),
                _probs(d),
                d["group_id"].to_numpy(),
                n=cfg.evaluate.bootstrap,
                seed=cfg.seed,
            )

    table = metrics_table(
        {VARIANTS[k]: r["scalars"] for k, r in results.items()},
        {VARIANTS[k]: r["ci95"] for k, r in results.items()},
        HEADLINE,
    )
    summary = {
        "split": cfg.evaluate.split,
        "student_arch": cfg.distill.model,
        "budget": dataclasses.asdict(cfg.distill.train),
        "models": {k: str(v) for k, v in models.items()},
        "results": {k: {"scalars": r["scalars"], "ci95": r["ci95"]} for k, r in results.items()},
        "paired_bootstrap": comparisons,
        "table": table,
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(ablation_markdown(table, comparisons))
    print((out / "ablation.md").read_text())
    return out / "ablation.json"


def ablation_markdown(table: list[dict[str, str]], comparisons: dict[str, Any]) -> str:
    columns = list(table[0]) if table else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
    for name, diffs in comparisons.items():
        lines += ["", f"Paired bootstrap, {name} (difference and 95% CI):", ""]
        for key, label in HEADLINE.items():
            if key not in diffs or diffs[key]["diff"] is None:
                continue
            lo, hi = diffs[key]["ci"]
            ci = f"{lo:+.3f} to {hi:+.3f}" if lo is not None else "n/a"
            higher = diffs[key]["frac_b_gt_a"]
            better = 1 - higher if key == "ece" else higher  # ECE: lower is better
            lines.append(
                f"- {label}: {diffs[key]['diff']:+.3f} ({ci}); "
                f"share of resamples where (d) is better = {better:.2f}"
            )
    return "\n".join(lines) + "\n"
