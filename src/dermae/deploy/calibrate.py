"""`dermae calibrate`: adapt an exported model's operating threshold to a new site.

A threshold chosen on HAM10000 validation for 90 % specificity need not give 90 % elsewhere
(another camera, population or prevalence). Here a small labelled slice of the new site
re-chooses the malignant threshold, for a target specificity or sensitivity, and optionally
fits temperature scaling. Both are written into the export (preprocess.json: "threshold",
"temperature"), so `predict`, `serve` and the web page use them, and the model card records
the site and slice they came from. The HAM10000 threshold is kept under threshold.ham10000.

What a slice of n images buys is reported by bootstrap: draw n images from the slice (with
replacement), choose the threshold on them, and measure what it achieves on the whole slice;
the 2.5-97.5 percentiles of that sensitivity and specificity are the spread a clinic
calibrating on n images should expect. The slice's own operating point also gets an exact
(Clopper-Pearson) binomial interval.

`holdout_evaluation` is the honest check: split a site's set by lesion/patient into a
calibration part and a test part, and compare on the test part the fixed HAM10000 threshold
with the one adapted on the calibration part.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.stats import binomtest

from dermae.config import DataConfig, ExternalSetConfig
from dermae.deploy.card import CARD_JSON, write_card
from dermae.deploy.images import as_model_input
from dermae.deploy.predictor import Predictor
from dermae.deploy.spec import apply_temperature, load_spec, write_spec
from dermae.evaluate.bootstrap import bootstrap_ci
from dermae.evaluate.external import SetLabels, load_external_set, set_labels
from dermae.metrics import choose_threshold, operating_point
from dermae.risk import malignant_risk

CALIBRATION_FILE = "site_calibration.json"
DEFAULT_SIZES = (50, 100, 200)
MIN_ROWS_PER_CLASS_FIT = 10  # fewer rows with a known diagnosis: fit T on benign/malignant
TEMPERATURE_BOUNDS = (0.05, 20.0)


# ----------------------------------------------------------------------------- data


def slice_predictions(
    export_dir: str | Path,
    data: str | Path,
    layout: str = "auto",
    work_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """(rows, probabilities before any temperature, spec) of the export on a labelled set.

    Images are cached at the export's size under `work_dir` (default: `external/` next to
    the export, the folder the evaluate stage uses); rows without a usable label are skipped
    and listed in that cache's skipped.csv.
    """
    export_dir = Path(export_dir)
    predictor = Predictor(export_dir)
    # The threshold is re-chosen on the model's own probabilities, not on an earlier site's T.
    predictor.spec = {**predictor.spec, "temperature": None}
    spec = load_spec(export_dir)
    name = Path(data).resolve().name
    cache = Path(work_dir) if work_dir else export_dir.resolve().parent / "external"
    prepared = load_external_set(
        ExternalSetConfig(name=name, path=str(data), layout=layout),
        DataConfig(),
        int(spec["image_size"]),
        cache,
    )
    rows = prepared.rows("test").reset_index(drop=True)
    images = as_model_input(prepared.arrays["real"][rows["cache_index"].to_numpy()])
    info = json.loads((prepared.root / "info.json").read_text())
    rows.attrs["skipped"] = int(info.get("skipped", 0))
    rows.attrs["skipped_csv"] = str(prepared.root / "skipped.csv")
    return rows, predictor.predict_array(images), spec


def _check_both_classes(malignant: np.ndarray, where: str) -> None:
    n_mal = int(np.sum(malignant))
    n_ben = len(malignant) - n_mal
    if n_mal == 0 or n_ben == 0:
        missing, held = (
            ("malignant", f"{n_ben} benign") if n_mal == 0 else ("benign", f"{n_mal} malignant")
        )
        raise ValueError(
            f"{where} holds no {missing} case ({held} images): choosing a threshold for a target "
            f"sensitivity or specificity needs both; add {missing} cases from this site "
            "(confirmed by histopathology or follow-up) to the slice"
        )


# ----------------------------------------------------------------------------- choosing


def choose_threshold_for_sensitivity(
    y_malignant: np.ndarray, risk: np.ndarray, sensitivity: float
) -> float:
    """Highest threshold (risk >= t is called malignant) whose sensitivity here is at least
    `sensitivity`; halfway to the next lower risk, mirroring `choose_threshold`."""
    if not 0.0 <= sensitivity <= 1.0:
        raise ValueError(f"target sensitivity must be in [0, 1], got {sensitivity}")
    y = np.asarray(y_malignant).astype(bool)
    r = np.asarray(risk, dtype=np.float64)
    positives = np.sort(r[y])[::-1]
    if len(positives) == 0:
        raise ValueError("cannot choose a threshold for a sensitivity: no malignant samples")
    k = int(math.ceil(sensitivity * len(positives) - 1e-9))
    if k <= 0:
        return float(np.nextafter(r.max(), np.inf))
    cut = positives[k - 1]
    below = r[r < cut]
    return float(cut) if len(below) == 0 else float((cut + below.max()) / 2.0)


def threshold_rule(
    target_specificity: float | None, target_sensitivity: float | None
) -> tuple[str, float, Callable[[np.ndarray, np.ndarray], float]]:
    """(kind, target, choose(y, risk) -> threshold); specificity 0.9 when neither is given."""
    if target_specificity is not None and target_sensitivity is not None:
        raise ValueError("give a target specificity or a target sensitivity, not both")
    if target_sensitivity is not None:
        return (
            "sensitivity",
            target_sensitivity,
            lambda y, r: choose_threshold_for_sensitivity(y, r, target_sensitivity),
        )
    target = 0.9 if target_specificity is None else target_specificity
    return "specificity", target, lambda y, r: choose_threshold(y, r, target)


def fit_temperature(
    probs: np.ndarray, labels: SetLabels, malignant_index: Sequence[int]
) -> dict[str, Any]:
    """Temperature T minimising the negative log-likelihood on the slice.

    Per-class NLL on rows whose diagnosis the model knows when at least two classes have
    MIN_ROWS_PER_CLASS_FIT rows between them; otherwise the benign/malignant NLL of the
    malignant risk on every row (a nevus-vs-melanoma or benign/malignant-only slice).
    """
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None))
    known = labels.target >= 0
    per_class = known.sum() >= MIN_ROWS_PER_CLASS_FIT and len(np.unique(labels.target[known])) >= 2
    mal = list(malignant_index)
    y = labels.malignant.astype(bool)

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        if per_class:
            return float(-log_q[known, labels.target[known]].mean())
        risk = np.clip(np.exp(log_q[:, mal]).sum(axis=1), 1e-12, 1 - 1e-12)
        return float(-(np.log(risk[y]).sum() + np.log1p(-risk[~y]).sum()) / len(risk))

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    fit = minimize_scalar(nll, bounds=(lo, hi), method="bounded")
    return {
        "temperature": float(math.exp(fit.x)),
        "fitted_on": (
            f"per-class labels of {int(known.sum())} images"
            if per_class
            else f"benign/malignant labels of {len(y)} images"
        ),
        "nll_before": nll(0.0),
        "nll_after": float(fit.fun),
    }


# ----------------------------------------------------------------------------- what n buys


def exact_interval(successes: int, trials: int) -> list[float] | None:
    """95 % Clopper-Pearson interval of a proportion; None without trials."""
    if trials == 0:
        return None
    ci = binomtest(successes, trials).proportion_ci(0.95, method="exact")
    return [float(ci.low), float(ci.high)]


def slice_size_effect(
    malignant: np.ndarray,
    risk: np.ndarray,
    choose: Callable[[np.ndarray, np.ndarray], float],
    sizes: Sequence[int] = DEFAULT_SIZES,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per slice size n: the spread (median, 95 % percentile interval) of the sensitivity and
    specificity that a threshold chosen on n images achieves on the whole slice (bootstrap)."""
    y = np.asarray(malignant).astype(np.int64)
    r = np.asarray(risk, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        sens, spec, unusable = [], [], 0
        for _ in range(n_boot):
            idx = rng.integers(0, len(y), int(n))
            if y[idx].all() or not y[idx].any():
                unusable += 1  # a draw with one class only cannot choose a threshold
                continue
            point = operating_point(y, r, choose(y[idx], r[idx]))
            sens.append(point["sensitivity"])
            spec.append(point["specificity"])
        entry: dict[str, Any] = {
            "n_images": int(n),
            "expected_malignant": float(n * y.mean()),
            "share_of_draws_without_both_classes": unusable / n_boot,
        }
        for name, values in (("sensitivity", sens), ("specificity", spec)):
            if values:
                lo, mid, hi = np.quantile(values, [0.025, 0.5, 0.975])
                entry[name] = {"median": float(mid), "ci95": [float(lo), float(hi)]}
            else:
                entry[name] = {"median": None, "ci95": None}
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- calibrate


def _ham_threshold(spec: dict[str, Any]) -> dict[str, Any]:
    """The threshold the export came with (chosen on HAM10000 validation)."""
    current = spec["threshold"]
    return dict(current.get("ham10000") or {k: v for k, v in current.items() if k != "site"})


def calibrate_slice(
    rows: pd.DataFrame,
    raw_probs: np.ndarray,
    spec: dict[str, Any],
    target_specificity: float | None = None,
    target_sensitivity: float | None = None,
    temperature: bool = False,
    where: str = "the slice",
) -> dict[str, Any]:
    """Threshold (and T) chosen on these rows; the operating point it gives on them."""
    labels = set_labels(rows, list(spec["class_names"]))
    _check_both_classes(labels.malignant, where)
    kind, target, choose = threshold_rule(target_specificity, target_sensitivity)
    fitted = fit_temperature(raw_probs, labels, spec["malignant_index"]) if temperature else None
    probs = apply_temperature(raw_probs, fitted["temperature"] if fitted else None)
    risk = malignant_risk(probs, spec["malignant_index"])
    threshold = choose(labels.malignant, risk)
    point = operating_point(labels.malignant, risk, threshold)
    point["sensitivity_exact_ci95"] = exact_interval(point["tp"], point["tp"] + point["fn"])
    point["specificity_exact_ci95"] = exact_interval(point["tn"], point["tn"] + point["fp"])
    return {
        "kind": kind,
        "target": target,
        "choose": choose,
        "threshold": threshold,
        "temperature": fitted,
        "risk": risk,
        "labels": labels,
        "on_slice": point,
    }


def calibrate_export(
    export_dir: str | Path,
    data: str | Path,
    layout: str = "auto",
    site: str | None = None,
    target_specificity: float | None = None,
    target_sensitivity: float | None = None,
    temperature: bool = False,
    sizes: Sequence[int] = DEFAULT_SIZES,
    n_boot: int = 1000,
    seed: int = 0,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Re-choose the export's threshold (and T) on a labelled slice and write them into it.

    Updates preprocess.json and the model card, writes site_calibration.json (the full
    record, with what 50/100/200-image slices buy) and returns that record.
    """
    export_dir = Path(export_dir)
    rows, raw, spec = slice_predictions(export_dir, data, layout, work_dir)
    site = site or Path(data).resolve().name
    chosen = calibrate_slice(
        rows, raw, spec, target_specificity, target_sensitivity, temperature, f"slice {data}"
    )
    ham = _ham_threshold(spec)
    ham_point = operating_point(
        chosen["labels"].malignant,
        malignant_risk(raw, spec["malignant_index"]),
        float(ham["malignant_risk"]),
    )
    record = {
        "site": site,
        "slice": {
            "path": str(Path(data).resolve()),
            "n_images": len(rows),
            "n_malignant": int(chosen["labels"].malignant.sum()),
            "n_groups": int(rows["group_id"].nunique()),
            "n_skipped": rows.attrs.get("skipped", 0),
            "skipped_csv": rows.attrs.get("skipped_csv"),
        },
        "calibrated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "target": {"kind": chosen["kind"], "value": chosen["target"]},
        "threshold": chosen["threshold"],
        "temperature": chosen["temperature"],
        "on_slice": chosen["on_slice"],
        "ham10000_threshold_on_slice": ham_point,
        "slice_size_effect": {
            "method": "bootstrap: draw n images from the slice with replacement, choose the "
            "threshold on them, measure it on the whole slice; 2.5-97.5 percentiles",
            "resamples": n_boot,
            "sizes": slice_size_effect(
                chosen["labels"].malignant, chosen["risk"], chosen["choose"], sizes, n_boot, seed
            ),
        },
    }
    _write_into_export(export_dir, spec, ham, record)
    return record


def _write_into_export(
    export_dir: Path, spec: dict[str, Any], ham: dict[str, Any], record: dict[str, Any]
) -> None:
    slice_info = record["slice"]
    source = (
        f"site calibration: {record['site']}, {slice_info['n_images']} images "
        f"({slice_info['n_malignant']} malignant) of {slice_info['path']}"
    )
    kind, value = record["target"]["kind"], record["target"]["value"]
    spec["threshold"] = {
        "malignant_risk": record["threshold"],
        "specificity": value if kind == "specificity" else None,
        "sensitivity": value if kind == "sensitivity" else None,
        "source": source,
        "operating_points": {f"{kind[:4]}@{value:.2f}": record["threshold"]},
        "site": {"name": record["site"], "slice": slice_info, "calibrated": record["calibrated"]},
        "ham10000": ham,
    }
    spec["temperature"] = (record["temperature"] or {}).get("temperature")
    write_spec(export_dir, spec)
    (export_dir / CALIBRATION_FILE).write_text(json.dumps(record, indent=2))
    card_path = export_dir / CARD_JSON
    if card_path.exists():
        card = json.loads(card_path.read_text())
        card["threshold"] = spec["threshold"]
        card["site_calibration"] = {
            "site": record["site"],
            "slice": slice_info,
            "target": record["target"],
            "threshold": record["threshold"],
            "temperature": spec["temperature"],
            "on_slice": {k: record["on_slice"][k] for k in ("sensitivity", "specificity")},
            "slice_size_effect": record["slice_size_effect"],
            "record": CALIBRATION_FILE,
        }
        write_card(export_dir, card)


# ----------------------------------------------------------------------------- holdout


def split_by_group(rows: pd.DataFrame, test_frac: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of test rows: whole lesions/patients (group_id), stratified by whether a
    group holds a malignant image, so both parts keep both classes where possible."""
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"--holdout must be a fraction in (0, 1), got {test_frac}")
    malignant_group = rows.groupby("group_id")["malignant"].max()
    rng = np.random.default_rng(seed)
    test_groups: list[str] = []
    for _, groups in malignant_group.groupby(malignant_group):
        names = groups.index.to_numpy()
        rng.shuffle(names)
        test_groups += list(names[: int(round(test_frac * len(names)))])
    return rows["group_id"].isin(test_groups).to_numpy()


def holdout_evaluation(
    export_dir: str | Path,
    data: str | Path,
    layout: str = "auto",
    test_frac: float = 0.5,
    target_specificity: float | None = None,
    target_sensitivity: float | None = None,
    temperature: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Fixed HAM10000 threshold vs one adapted on a calibration part, on a held-out test part.

    The export is not changed. CIs resample lesions/patients of the test part (images when
    the set has no lesion ids).
    """
    rows, raw, spec = slice_predictions(export_dir, data, layout, work_dir)
    test = split_by_group(rows, test_frac, seed)
    calib_rows, test_rows = rows[~test].reset_index(drop=True), rows[test].reset_index(drop=True)
    chosen = calibrate_slice(
        calib_rows,
        raw[~test],
        spec,
        target_specificity,
        target_sensitivity,
        temperature,
        f"the calibration part of {data}",
    )
    labels = set_labels(test_rows, list(spec["class_names"]))
    _check_both_classes(labels.malignant, f"the test part of {data}")
    ham = float(_ham_threshold(spec)["malignant_risk"])
    fixed_risk = malignant_risk(raw[test], spec["malignant_index"])
    t_fit = (chosen["temperature"] or {}).get("temperature")
    adapted_risk = malignant_risk(apply_temperature(raw[test], t_fit), spec["malignant_index"])

    def metric_fn(y: np.ndarray, risks: np.ndarray) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, column, t in (("fixed", 0, ham), ("adapted", 1, chosen["threshold"])):
            point = operating_point(y, risks[:, column], t)
            out[f"{name}_sensitivity"] = point["sensitivity"]
            out[f"{name}_specificity"] = point["specificity"]
        for m in ("sensitivity", "specificity"):
            a, f = out[f"adapted_{m}"], out[f"fixed_{m}"]
            out[f"{m}_adapted_minus_fixed"] = None if a is None or f is None else a - f
        return out

    risks = np.column_stack([fixed_risk, adapted_risk])
    has_ids = bool((test_rows["group_id"] != test_rows["image_id"]).any())
    groups = test_rows["group_id"].to_numpy() if has_ids else None
    point = metric_fn(labels.malignant, risks)
    ci = bootstrap_ci(metric_fn, labels.malignant, risks, groups, n=n_boot, seed=seed)
    return {
        "data": str(Path(data).resolve()),
        "split": f"by {'lesion/patient' if has_ids else 'image (no lesion ids)'}, "
        f"{test_frac:.0%} of groups held out, stratified by malignancy, seed {seed}",
        "calibration_part": {
            "n_images": len(calib_rows),
            "n_malignant": int(calib_rows["malignant"].sum()),
        },
        "test_part": {"n_images": len(test_rows), "n_malignant": int(labels.malignant.sum())},
        "target": {"kind": chosen["kind"], "value": chosen["target"]},
        "fixed_threshold": {"malignant_risk": ham, "source": "HAM10000 validation"},
        "adapted_threshold": {
            "malignant_risk": chosen["threshold"],
            "temperature": t_fit,
            "on_calibration_part": {
                k: chosen["on_slice"][k] for k in ("sensitivity", "specificity")
            },
        },
        "on_test_part": point,
        "ci95": ci,
        "bootstrap": {
            "resamples": n_boot,
            "unit": "lesion or patient (group_id)" if has_ids else "image",
        },
        "export_changed": False,
    }


# ----------------------------------------------------------------------------- command


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ci(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" (95% CI {ci[0]:.1%}-{ci[1]:.1%})"


def _holdout_path(out: Path | None, model: Path, data: Path) -> Path:
    """Where --holdout writes: `out` (a folder gets the default name), else beside the export."""
    name = f"calibrate-holdout-{Path(data).name}.json"
    if out is None:
        return model.resolve().parent / name
    out = Path(out)
    if out.is_dir():
        return out / name
    if not out.parent.exists():
        raise FileNotFoundError(f"--out {out}: its folder {out.parent} does not exist; create it")
    return out


def calibrate_command(
    model: Path,
    data: Path,
    layout: str = "auto",
    site: str | None = None,
    target_specificity: float | None = None,
    target_sensitivity: float | None = None,
    temperature: bool = False,
    holdout: float | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    n_boot: int = 1000,
    seed: int = 0,
    out: Path | None = None,
) -> Path:
    """`dermae calibrate`: write a site threshold into the export, or (--holdout) evaluate
    the adaptation on a held-out part without changing the export."""
    if out is not None and holdout is None:
        raise ValueError(
            "--out names where --holdout writes its JSON; without --holdout the threshold is "
            f"written into the export itself ({model}), so drop --out or add --holdout FRAC"
        )
    common = dict(layout=layout, target_specificity=target_specificity, seed=seed)
    common.update(target_sensitivity=target_sensitivity, temperature=temperature)
    if holdout is not None:
        result = holdout_evaluation(model, data, test_frac=holdout, n_boot=n_boot, **common)
        path = _holdout_path(out, model, data)
        path.write_text(json.dumps(result, indent=2))
        p, ci = result["on_test_part"], result["ci95"]
        print(
            f"held-out test part: {result['test_part']['n_images']} images "
            f"({result['test_part']['n_malignant']} malignant), split {result['split']}"
        )
        for name in ("fixed", "adapted"):
            t = result[f"{name}_threshold"]["malignant_risk"]
            print(
                f"  {name:<8} threshold {t:.4f}: sensitivity {_pct(p[f'{name}_sensitivity'])}"
                f"{_ci(ci[f'{name}_sensitivity'])}, specificity "
                f"{_pct(p[f'{name}_specificity'])}{_ci(ci[f'{name}_specificity'])}"
            )
        print("  the export was not changed; run without --holdout to calibrate it")
        return path
    record = calibrate_export(model, data, site=site, sizes=sizes, n_boot=n_boot, **common)
    s = record["on_slice"]
    ham = record["ham10000_threshold_on_slice"]
    print(
        f"site {record['site']}: threshold {record['threshold']:.4f} for "
        f"{record['target']['kind']} {record['target']['value']:.0%} on "
        f"{record['slice']['n_images']} images ({record['slice']['n_malignant']} malignant)"
    )
    print(
        f"  on the slice: sensitivity {_pct(s['sensitivity'])}{_ci(s['sensitivity_exact_ci95'])}, "
        f"specificity {_pct(s['specificity'])}{_ci(s['specificity_exact_ci95'])} (exact binomial; "
        "in-sample, so optimistic)"
    )
    print(
        f"  HAM10000 threshold {ham['threshold']:.4f} here: sensitivity "
        f"{_pct(ham['sensitivity'])}, specificity {_pct(ham['specificity'])}"
    )
    if record["temperature"]:
        t = record["temperature"]
        print(f"  temperature {t['temperature']:.3f} fitted on {t['fitted_on']}")
    print("  what a slice of n images buys (bootstrap, threshold chosen on n, measured here):")
    for entry in record["slice_size_effect"]["sizes"]:
        print(
            f"    n={entry['n_images']:>4}: sensitivity {_pct(entry['sensitivity']['median'])}"
            f"{_ci(entry['sensitivity']['ci95'])}, specificity "
            f"{_pct(entry['specificity']['median'])}{_ci(entry['specificity']['ci95'])}"
        )
    return Path(model) / CALIBRATION_FILE


__all__ = [
    "CALIBRATION_FILE",
    "calibrate_command",
    "calibrate_export",
    "choose_threshold_for_sensitivity",
    "fit_temperature",
    "holdout_evaluation",
    "slice_size_effect",
    "split_by_group",
]
