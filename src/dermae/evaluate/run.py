"""`dermae evaluate`: a classifier on a split (or an external set) -> metrics.json + plots.

Thresholds come from the checkpoint (chosen on validation); the evaluated split never
chooses anything. Confidence intervals resample lesions, not images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermae.classify.common import predict_probs
from dermae.classify.model import load_classifier
from dermae.config import Config, EvalConfig
from dermae.data.errors import DataError
from dermae.data.prepared import PreparedData, load_prepared
from dermae.evaluate.bootstrap import bootstrap_ci
from dermae.evaluate.plots import plot_confusion_matrix, plot_reliability, plot_roc
from dermae.layout import BASELINE, ENSEMBLE, STUDENT, TEACHER, RunLayout
from dermae.metrics import (
    classification_metrics,
    flatten_metrics,
    scalar_metric_fn,
    subgroup_metrics,
)

# The models the pipeline evaluates on the test split (stage folders of the run dir).
RUN_MODELS = (BASELINE, TEACHER, ENSEMBLE, STUDENT)


def model_targets(rows: pd.DataFrame, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Targets in the model's class order, and a mask of rows the model can score.

    A binary (benign/malignant) model is scored on the malignant column. A diagnosis the
    model does not know (an external set with other classes) cannot be scored per class; it
    is excluded and counted, never silently dropped.
    """
    if class_names == ["benign", "malignant"]:
        return rows["malignant"].to_numpy(dtype=np.int64), np.ones(len(rows), dtype=bool)
    index = {name: i for i, name in enumerate(class_names)}
    known = rows["diagnosis"].isin(index).to_numpy()
    targets = rows["diagnosis"].map(index).fillna(-1).to_numpy(dtype=np.int64)
    return targets, known


def evaluate_model(
    model_dir: str | Path,
    prepared: PreparedData,
    split: str,
    out_dir: str | Path,
    eval_cfg: EvalConfig,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics with lesion-bootstrap CIs, subgroups and plots; writes metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, config = load_classifier(model_dir)
    model_size = int(config["image_size"])
    if prepared.image_size != model_size:
        # A CNN runs on any size, so metrics on resized images would look fine while meaning
        # little: the model sees the same images cached at its own size (a teacher at 2x).
        try:
            prepared = prepared.at_size(model_size)
        except DataError as err:
            raise ValueError(
                f"{model_dir} is a {model_size}-px model but {prepared.root} holds "
                f"{prepared.image_size}-px images, and their sources cannot be cached again "
                f"at {model_size} px ({err}): evaluate it on data prepared at {model_size} px "
                f"(--set data.image_size={model_size} with another --run-dir)"
            ) from err
    rows = prepared.rows(split).reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"split '{split}' of {prepared.root} has no images to evaluate")
    targets, known = model_targets(rows, config["class_names"])
    rows, targets = rows[known].reset_index(drop=True), targets[known]
    class_names = config["class_names"]
    mal_index = [i for i, c in enumerate(class_names) if c in config["malignant_classes"]]
    thresholds = config.get("thresholds") or {}

    probs = predict_probs(model, prepared.dataset(rows), eval_cfg.batch_size, desc=f"eval {split}")
    report = classification_metrics(
        targets, probs, class_names, mal_index, thresholds, eval_cfg.ece_bins
    )
    metric_fn = scalar_metric_fn(
        mal_index, thresholds, eval_cfg.ece_bins, required_classes=np.unique(targets)
    )
    ci = bootstrap_ci(
        metric_fn, targets, probs, rows["group_id"].to_numpy(), n=eval_cfg.bootstrap, seed=seed
    )
    default = (config.get("threshold") or {}).get("malignant_risk")
    subgroups = subgroup_metrics(rows, targets, probs, mal_index, threshold=default)

    plots = {
        "confusion": plot_confusion_matrix(
            report["confusion_matrix"], class_names, out / "confusion.png"
        ),
        "roc": plot_roc(targets, probs, class_names, mal_index, out / "roc.png", thresholds),
        "reliability": plot_reliability(targets, probs, out / "reliability.png", eval_cfg.ece_bins),
    }
    result = {
        "model": str(model_dir),
        "arch": config["arch"],
        "split": split,
        "n_images": len(rows),
        "n_lesions": int(rows["group_id"].nunique()),
        "n_excluded_unknown_class": int((~known).sum()),
        "thresholds_chosen_on": (config.get("threshold") or {}).get("chosen_on"),
        "scalars": flatten_metrics(report),
        "ci95": ci,
        "bootstrap": {"resamples": eval_cfg.bootstrap, "unit": "lesion (group_id)"},
        "metrics": report,
        "subgroups": subgroups,
        "plots": {k: str(v) for k, v in plots.items()},
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=json_default))
    predictions = rows[["image_id", "group_id", "diagnosis", "malignant"]].copy()
    predictions["target"] = targets
    for i, name in enumerate(class_names):
        predictions[f"p_{name}"] = probs[:, i]
    predictions.to_csv(out / "predictions.csv", index=False)
    return result


def _evaluate_data(cfg: Config, model_dir: Path, data: Path, out_dir: Path | None) -> Path:
    """`dermae evaluate --data`: an external set, scored like the `evaluate.external` sets
    (label-only rows count for the malignant metrics; unusable rows listed in skipped.csv)."""
    from dermae.config import ExternalSetConfig
    from dermae.evaluate.external import load_external_set, score_model_on_set

    run_dir = Path(cfg.run_dir)
    spec = ExternalSetConfig(name=data.resolve().name, path=str(data))
    model, config = load_classifier(model_dir)
    prepared = load_external_set(spec, cfg.data, int(config["image_size"]), run_dir / "external")
    out = Path(out_dir or RunLayout(run_dir).evaluate / f"{model_dir.parent.name}-{spec.name}")
    result = score_model_on_set(model, config, model_dir, spec, prepared, cfg, out)
    print(headline({**result, "split": spec.name, "n_lesions": result["n_groups"]}))
    print(
        f"  {result['n_skipped']} row(s) skipped (no usable label; see {result['skipped_csv']}), "
        f"{result['n_excluded_from_per_class']} outside the per-class metrics "
        f"({result['excluded_from_per_class_by_diagnosis'] or 'none'}); CIs by "
        f"{result['bootstrap']['unit']}"
    )
    return out / "metrics.json"


def json_default(value: Any) -> Any:
    """json.dumps(default=...) for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def headline(result: dict[str, Any]) -> str:
    """One line per metric: value (95 % CI)."""
    lines = [
        f"{result['split']} split: {result['n_images']} images of {result['n_lesions']} lesions"
    ]
    for key, value in result["scalars"].items():
        lo, hi = result["ci95"].get(key, (None, None))
        ci = f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"  {key:<42} {shown}{ci}")
    return "\n".join(lines)


def evaluate_stage(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Pipeline stage: every model the run trained, on the configured split (test)."""
    run_dir = Path(run_dir)
    prepared = load_prepared(run_dir, with_synthetic=False)
    layout = RunLayout(run_dir)
    out = layout.evaluate
    evaluated = {}
    for name in RUN_MODELS:
        if (layout.model(name) / "model.safetensors").exists():
            result = evaluate_model(
                layout.model(name), prepared, cfg.evaluate.split, out / name, cfg.evaluate, cfg.seed
            )
            print(f"[{name}] {headline(result)}")
            evaluated[name] = layout.model(name)
    # evaluate.external: the same models on other sites' sets, next to the internal split.
    from dermae.evaluate.external import evaluate_external

    evaluate_external(cfg, run_dir, evaluated, out / "external")
    return out


def evaluate_command(
    cfg: Config,
    model_dir: Path | None = None,
    split: str | None = None,
    data: Path | None = None,
    out_dir: Path | None = None,
) -> Path:
    """`dermae evaluate`: the run's student by default; `--data` scores an external set."""
    run_dir = Path(cfg.run_dir)
    model_dir = Path(model_dir or RunLayout(run_dir).student_model)
    if data is not None:
        return _evaluate_data(cfg, model_dir, Path(data), out_dir)
    prepared = load_prepared(run_dir, with_synthetic=False)
    split = split or cfg.evaluate.split
    out = Path(out_dir or RunLayout(run_dir).evaluate / f"{model_dir.parent.name}-{split}")
    result = evaluate_model(model_dir, prepared, split, out, cfg.evaluate, cfg.seed)
    print(headline(result))
    return out / "metrics.json"
