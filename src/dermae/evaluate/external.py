"""External validation: score trained models on labelled sets from other sites.

An external set (config `evaluate.external: [{name, path, layout}]`, any layout ingest reads)
is never trained or tuned on. What can be scored is scored:

- every row with a benign/malignant label counts for the malignant metrics (AUROC, and the
  sensitivity/specificity at the thresholds chosen on HAM10000 validation);
- the per-class metrics use only rows whose diagnosis the model knows; the others are
  excluded and counted by diagnosis;
- mel-vs-rest AUROC uses every row whose melanoma status is known (a named diagnosis, or a
  benign label), so a nevus-vs-melanoma set gets the metrics that make sense for it;
- only rows with no usable label are skipped, each listed in `skipped.csv` with its reason.

Confidence intervals resample lesions (or patients) when the set has such ids, and images
otherwise; the results say which. The same scoring is applied to the internal test split's
predictions, so internal and external numbers are comparable side by side.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermae.classify.common import predict_probs
from dermae.classify.model import load_classifier
from dermae.config import Config, DataConfig, EvalConfig, ExternalSetConfig
from dermae.data.prepare import prepare_external
from dermae.data.prepared import PreparedData
from dermae.evaluate.bootstrap import bootstrap_ci, paired_bootstrap
from dermae.evaluate.report import format_ci
from dermae.evaluate.run import json_default
from dermae.layout import RunLayout
from dermae.metrics import (
    binary_auroc,
    classification_metrics,
    flatten_metrics,
    malignant_risk,
    operating_point,
    scalar_metric_fn,
    scalar_metrics,
)

EXTERNAL_FILE = "external.json"
INTERNAL = "internal"  # the key of the run's own test split in the summary
MEL = "mel"
# Per-class scalars (rows whose diagnosis the model knows) and set-wide malignant scalars.
CLASS_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "ece")
# Diagnoses that say nothing about melanoma status beyond the benign/malignant label.
UNNAMED = ("unknown", "malignant")


@dataclass(frozen=True)
class SetLabels:
    """Labels of a scored set, one entry per row, in the model's class order."""

    target: np.ndarray  # class index, -1 where the model does not know the diagnosis
    malignant: np.ndarray  # 0 / 1 for every row
    mel: np.ndarray  # 1 melanoma, 0 not melanoma, -1 unknown (e.g. "malignant", no diagnosis)

    def packed(self) -> np.ndarray:
        """One int per row holding all three labels, so the bootstrap resamples them together."""
        return (self.target + 1) * 6 + (self.mel + 1) * 2 + self.malignant

    @classmethod
    def unpack(cls, codes: np.ndarray) -> SetLabels:
        return cls(codes // 6 - 1, codes % 2, (codes // 2) % 3 - 1)


def set_labels(rows: pd.DataFrame, class_names: list[str]) -> SetLabels:
    """Labels of `rows` (diagnosis, malignant columns) for a model with these classes."""
    diagnosis = rows["diagnosis"].astype(str).to_numpy()
    malignant = rows["malignant"].to_numpy(dtype=np.int64)
    if class_names == ["benign", "malignant"]:
        target = malignant.copy()
    else:
        index = {name: i for i, name in enumerate(class_names)}
        target = np.array([index.get(d, -1) for d in diagnosis], dtype=np.int64)
    mel = np.where(diagnosis == MEL, 1, 0)
    mel[np.isin(diagnosis, UNNAMED) & (malignant == 1)] = -1
    return SetLabels(target, malignant, mel.astype(np.int64))


def _two_columns(score: np.ndarray) -> np.ndarray:
    """[N] score in [0, 1] -> [N, 2] pseudo-probabilities, so scalar_metrics scores it."""
    return np.column_stack([1.0 - score, score])


def _scalar_fn(
    class_names: list[str],
    mal_index: list[int],
    thresholds: Mapping[str, float],
    ece_bins: int,
    required: np.ndarray,
):
    """metric_fn(packed labels, probs) for the bootstrap: the same scalars as `score_set`."""
    class_fn = scalar_metric_fn(mal_index, None, ece_bins, required_classes=required)
    mel_index = class_names.index(MEL) if MEL in class_names else None

    def metric_fn(codes: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
        labels = SetLabels.unpack(codes)
        known = labels.target >= 0
        out: dict[str, float | None] = dict.fromkeys(CLASS_KEYS)
        if known.any():
            scores = class_fn(labels.target[known], probs[known])
            out.update({k: scores[k] for k in CLASS_KEYS})
        risk = malignant_risk(probs, mal_index)
        mal = scalar_metrics(labels.malignant, _two_columns(risk), [1], thresholds, ece_bins)
        out.update({k: v for k, v in mal.items() if k.startswith("malignant_")})
        out["mel_auroc"] = None
        if mel_index is not None:
            status = labels.mel >= 0
            mel = scalar_metrics(
                labels.mel[status], _two_columns(probs[status, mel_index]), [1], None, ece_bins
            )
            out["mel_auroc"] = mel["malignant_auroc"]
        return out

    return metric_fn


def score_set(
    rows: pd.DataFrame,
    probs: np.ndarray,
    class_names: list[str],
    malignant_classes: list[str],
    thresholds: Mapping[str, float],
    eval_cfg: EvalConfig,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric the set supports, with bootstrap CIs (lesion/patient or image level).

    `rows` needs diagnosis, malignant, image_id and group_id columns aligned with `probs`.
    """
    rows = rows.reset_index(drop=True)
    labels = set_labels(rows, class_names)
    mal_index = [i for i, c in enumerate(class_names) if c in malignant_classes]
    known = labels.target >= 0
    thresholds = {k: float(v) for k, v in (thresholds or {}).items()}

    risk = malignant_risk(probs, mal_index)
    mal_auroc, mal_note = binary_auroc(labels.malignant, risk)
    points = {k: operating_point(labels.malignant, risk, t) for k, t in thresholds.items()}
    report = None
    scalars: dict[str, float | None] = dict.fromkeys(CLASS_KEYS)
    if known.any():
        report = classification_metrics(
            labels.target[known], probs[known], class_names, mal_index, None, eval_cfg.ece_bins
        )
        scalars.update({k: v for k, v in flatten_metrics(report).items() if k in CLASS_KEYS})
    scalars["malignant_auroc"] = mal_auroc
    for key, point in points.items():
        scalars[f"malignant_sensitivity[{key}]"] = point["sensitivity"]
        scalars[f"malignant_specificity[{key}]"] = point["specificity"]
    mel_note = "the model has no 'mel' class"
    scalars["mel_auroc"] = None
    if MEL in class_names:
        status = labels.mel >= 0
        scalars["mel_auroc"], mel_note = binary_auroc(
            labels.mel[status] == 1, probs[status, class_names.index(MEL)]
        )

    has_lesion_ids = bool((rows["group_id"].astype(str) != rows["image_id"].astype(str)).any())
    groups = rows["group_id"].to_numpy() if has_lesion_ids else None
    unit = "lesion or patient (group_id)" if has_lesion_ids else "image (the set has no lesion ids)"
    present = np.unique(labels.target[known])
    metric_fn = _scalar_fn(class_names, mal_index, thresholds, eval_cfg.ece_bins, present)
    ci = bootstrap_ci(metric_fn, labels.packed(), probs, groups, n=eval_cfg.bootstrap, seed=seed)
    excluded = rows.loc[~known, "diagnosis"].value_counts()
    return {
        "n_images": len(rows),
        "n_groups": int(rows["group_id"].nunique()),
        "n_malignant": int(labels.malignant.sum()),
        "n_benign": int(len(rows) - labels.malignant.sum()),
        "n_per_class_scored": int(known.sum()),
        "n_excluded_from_per_class": int((~known).sum()),
        "excluded_from_per_class_by_diagnosis": {str(k): int(v) for k, v in excluded.items()},
        "n_mel_status_known": int((labels.mel >= 0).sum()),
        "classes_present": [class_names[i] for i in present],
        "scalars": scalars,
        "ci95": ci,
        "notes": {"malignant_auroc": mal_note, "mel_auroc": mel_note},
        "bootstrap": {"resamples": eval_cfg.bootstrap, "unit": unit},
        "operating_points": points,
        "metrics": report,
    }


# ----------------------------------------------------------------------------- loading


def load_external_set(
    spec: ExternalSetConfig, data_cfg: DataConfig, image_size: int, cache_root: str | Path
) -> PreparedData:
    """The set cached at `image_size` under `<cache_root>/<name>/<size>px/data/` (reused when
    the source files are unchanged). Unusable rows are skipped and listed, never fatal."""
    if not spec.name or not spec.path:
        raise ValueError(
            f"evaluate.external entry {spec} needs both a name and a path: "
            "evaluate.external: [{name: clinic_a, path: /data/clinic_a}]"
        )
    # A scored row without a lesion id is still scored (as its own group; ingest notes it).
    data = dataclasses.replace(
        data_cfg, image_size=image_size, skip_bad=True, group_missing_lesions="image"
    )
    folder = Path(cache_root) / spec.name / f"{image_size}px"
    return prepare_external(data, spec.path, folder, layout=spec.layout)


def _model_thresholds(config: dict[str, Any]) -> dict[str, float]:
    thresholds = dict(config.get("thresholds") or {})
    default = config.get("threshold") or {}
    if not thresholds and "malignant_risk" in default:
        thresholds[default.get("operating_point") or "default"] = default["malignant_risk"]
    return thresholds


def _read_predictions(folder: Path) -> tuple[pd.DataFrame, np.ndarray] | None:
    """A predictions.csv (p_<class> columns in class order) as (rows, probs), if it exists."""
    path = folder / "predictions.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path, dtype={"image_id": str, "group_id": str, "diagnosis": str})
    probs = table[[c for c in table.columns if c.startswith("p_")]].to_numpy(dtype=np.float64)
    return table, probs


def _write_predictions(rows: pd.DataFrame, probs: np.ndarray, names: list[str], out: Path):
    table = rows[["image_id", "group_id", "diagnosis", "malignant"]].copy()
    for i, name in enumerate(names):
        table[f"p_{name}"] = probs[:, i]
    table.to_csv(out / "predictions.csv", index=False)


SET_KEYS = ("path", "layout", "source", "n_skipped", "skipped_csv", "data_notes")


def score_model_on_set(
    model: Any,
    config: dict[str, Any],
    model_dir: str | Path,
    spec: ExternalSetConfig,
    prepared: PreparedData,
    cfg: Config,
    out_dir: str | Path,
) -> dict[str, Any]:
    """One loaded classifier on one prepared external set: writes metrics.json,
    predictions.csv and the set's skipped.csv into `out_dir`; returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names, mal_classes = list(config["class_names"]), list(config["malignant_classes"])
    thresholds = _model_thresholds(config)
    rows = prepared.rows("test").reset_index(drop=True)
    probs = predict_probs(
        model, prepared.dataset(rows), cfg.evaluate.batch_size, desc=f"eval {spec.name}"
    )
    scored = score_set(rows, probs, class_names, mal_classes, thresholds, cfg.evaluate, cfg.seed)
    shutil.copyfile(prepared.root / "skipped.csv", out / "skipped.csv")
    info = json.loads((prepared.root / "info.json").read_text())
    result = {
        "set": spec.name,
        "path": spec.path,
        "layout": info.get("layout"),
        "source": info.get("source"),
        "n_skipped": int(info.get("skipped", 0)),
        "skipped_csv": str(out / "skipped.csv"),
        "data_notes": info.get("notes", []),  # what ingest noticed (nothing dropped)
        "model": str(model_dir),
        "arch": config.get("arch"),
        "class_names": class_names,
        "malignant_classes": mal_classes,
        "thresholds": thresholds,
        "thresholds_chosen_on": (config.get("threshold") or {}).get("chosen_on"),
        **scored,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=json_default))
    _write_predictions(rows, probs, class_names, out)
    return result


def evaluate_external(
    cfg: Config,
    run_dir: str | Path,
    models: Mapping[str, str | Path],
    out_dir: str | Path | None = None,
    internal: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Score every model folder (classifier checkpoint) on every set of `evaluate.external`.

    `models`: name -> checkpoint folder. `internal`: name -> the folder where that model's
    internal evaluation wrote predictions.csv (default `<run_dir>/evaluate/<name>`); it is
    re-scored the same way for the side-by-side table. Writes
    `<out_dir>/<set>/<model>/{metrics.json, predictions.csv, skipped.csv}` and
    `<out_dir>/external.json` (default out_dir `<run_dir>/evaluate/external`).
    Returns the external.json content; {} when no external set is configured.
    """
    sets = tuple(cfg.evaluate.external)
    if not sets:
        return {}
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluate.external names must be unique; got {names}")
    run_dir = Path(run_dir)
    out = Path(out_dir or RunLayout(run_dir).evaluate / "external")
    out.mkdir(parents=True, exist_ok=True)
    internal = dict(internal or {n: RunLayout(run_dir).evaluate / n for n in models})
    summary: dict[str, Any] = {"sets": {}, "results": {}}
    loaded: dict[tuple[str, int], PreparedData] = {}
    for model_name, model_dir in models.items():
        model, config = load_classifier(model_dir)
        class_names, mal_classes = list(config["class_names"]), list(config["malignant_classes"])
        thresholds = _model_thresholds(config)
        entry: dict[str, Any] = {"model": str(model_dir), "arch": config.get("arch")}
        found = _read_predictions(Path(internal[model_name])) if model_name in internal else None
        if found is not None:
            result = score_set(*found, class_names, mal_classes, thresholds, cfg.evaluate, cfg.seed)
            entry[INTERNAL] = {**result, "data": f"{cfg.evaluate.split} split of the run's data"}
        for spec in sets:
            key = (spec.name, int(config["image_size"]))
            if key not in loaded:
                loaded[key] = load_external_set(spec, cfg.data, key[1], run_dir / "external")
            result = score_model_on_set(
                model, config, model_dir, spec, loaded[key], cfg, out / spec.name / model_name
            )
            summary["sets"][spec.name] = {k: result[k] for k in SET_KEYS}
            entry[spec.name] = result
            _print_headline(model_name, spec.name, result)
        summary["results"][model_name] = {
            k: _brief(v) if isinstance(v, dict) else v for k, v in entry.items()
        }
    summary["table"] = side_by_side(summary)
    (out / EXTERNAL_FILE).write_text(json.dumps(summary, indent=2, default=json_default))
    return summary


def paired_on_external(
    cfg: Config, out_dir: str | Path, models: list[str], reference: str
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of each model minus `reference` on every external set, from what
    `evaluate_external(..., out_dir)` wrote: {set: {"<model> - <reference>": {metric: {diff,
    ci, frac_b_gt_a, n_valid}}}}. Threshold-free metrics only (malignant and mel-vs-rest
    AUROC, per-class scalars): each model has its own validation threshold."""
    out = Path(out_dir)
    comparisons: dict[str, dict[str, Any]] = {}
    for spec in cfg.evaluate.external:
        folder = out / spec.name
        ref = json.loads((folder / reference / "metrics.json").read_text())
        ref_rows, ref_probs = _read_predictions(folder / reference)
        labels = set_labels(ref_rows, ref["class_names"])
        mal_index = [i for i, c in enumerate(ref["class_names"]) if c in ref["malignant_classes"]]
        present = np.unique(labels.target[labels.target >= 0])
        fn = _scalar_fn(ref["class_names"], mal_index, {}, cfg.evaluate.ece_bins, present)
        has_ids = bool((ref_rows["group_id"] != ref_rows["image_id"]).any())
        groups = ref_rows["group_id"].to_numpy() if has_ids else None
        comparisons[spec.name] = {}
        for name in (m for m in models if m != reference):
            other = json.loads((folder / name / "metrics.json").read_text())
            rows, probs = _read_predictions(folder / name)
            if other["class_names"] != ref["class_names"] or list(rows["image_id"]) != list(
                ref_rows["image_id"]
            ):
                raise ValueError(
                    f"{name} and {reference} on {spec.name} differ in classes or images; "
                    "a paired comparison needs the same images and class order"
                )
            comparisons[spec.name][f"{name} - {reference}"] = paired_bootstrap(
                fn, labels.packed(), ref_probs, probs, groups, cfg.evaluate.bootstrap, cfg.seed
            )
    return comparisons


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    """What the summary keeps of a set's result (no per-class report)."""
    return {k: v for k, v in result.items() if k not in ("metrics", "operating_points")}


def _print_headline(model: str, set_name: str, result: dict[str, Any]) -> None:
    s = result["scalars"]
    shown = ", ".join(
        f"{k} {v:.3f}" for k, v in s.items() if v is not None and not k.startswith("malignant_s")
    )
    print(
        f"[{model} on {set_name}] {result['n_images']} images ({result['n_skipped']} skipped, "
        f"{result['n_excluded_from_per_class']} outside the per-class metrics): {shown}"
    )


# ----------------------------------------------------------------------------- report table

SIDE_BY_SIDE = {
    "malignant_auroc": "malignant AUROC",
    "mel_auroc": "mel-vs-rest AUROC",
    "sensitivity": "malignant sensitivity",
    "specificity": "specificity reached",
    "balanced_accuracy": "balanced accuracy (classes present)",
}


def _cell(result: dict[str, Any], key: str) -> str:
    return format_ci(result["scalars"].get(key), result["ci95"].get(key))


def side_by_side(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows (model x data set) for the report: internal first, then every external set.

    Sensitivity and specificity are at the model's first stored threshold (the one chosen
    on HAM10000 validation for the lowest target specificity).
    """
    rows = []
    for model, entry in summary.get("results", {}).items():
        for data, result in entry.items():
            if not isinstance(result, dict) or "scalars" not in result:
                continue
            op = next((k for k in result["scalars"] if k.startswith("malignant_sens")), None)
            op_key = op[len("malignant_sensitivity[") : -1] if op else None
            row = {
                "model": model,
                "data": "internal test" if data == INTERNAL else data,
                "images (groups)": f"{result['n_images']} ({result['n_groups']})",
                "CI unit": result["bootstrap"]["unit"],
                "outside per-class": str(result["n_excluded_from_per_class"]),
                SIDE_BY_SIDE["malignant_auroc"]: _cell(result, "malignant_auroc"),
                SIDE_BY_SIDE["mel_auroc"]: _cell(result, "mel_auroc"),
            }
            for name in ("sensitivity", "specificity"):
                key = f"malignant_{name}[{op_key}]" if op_key else None
                label = f"{SIDE_BY_SIDE[name]} @ {op_key}" if op_key else SIDE_BY_SIDE[name]
                row[label] = _cell(result, key) if key else "n/a"
            row[SIDE_BY_SIDE["balanced_accuracy"]] = _cell(result, "balanced_accuracy")
            rows.append(row)
    return rows


__all__ = [
    "EXTERNAL_FILE",
    "SetLabels",
    "evaluate_external",
    "load_external_set",
    "paired_on_external",
    "score_set",
    "set_labels",
    "side_by_side",
]
