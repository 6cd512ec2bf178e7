"""Classification metrics shared by every stage (baseline, teacher, student, ONNX model).

Inputs are plain arrays: `y_true` int [N] class indices and `probs` float [N, C] softmax
probabilities (rows sum to 1). The 7-class prediction is the arg-max; the malignant "risk" is the
sum of the probabilities of the malignant classes. Undefined values (an AUROC on a set with one
class only, a sensitivity with no positives) are reported as None together with a reason instead
of raising, so that small or skewed evaluation sets never crash a run.

Two implementations of the scalar metrics live here on purpose:
- `classification_metrics` builds the full report with scikit-learn (point estimates);
- `scalar_metrics` recomputes the headline scalars with numpy only (rank-based AUROC,
  bincount confusion matrix). It is what the bootstrap calls a thousand times; the tests check
  that both agree.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from dermae.risk import malignant_risk

PROB_SUM_ATOL = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; this only catches logits etc.
AGE_BANDS: tuple[str, ...] = ("<30", "30-44", "45-59", "60-74", "75+", "unknown")
UNKNOWN = "unknown"


# ----------------------------------------------------------------------------- input checks


def check_inputs(
    y_true: Sequence[int] | np.ndarray,
    probs: Sequence[Sequence[float]] | np.ndarray,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (int64 [N], float64 [N, C]). Raises ValueError naming the row."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D array [N, C]; got shape {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(
            f"y_true must be 1-D with one label per row of probs; got y_true shape {y.shape} "
            f"and probs shape {p.shape}"
        )
    if len(y) == 0:
        raise ValueError("no samples: y_true and probs are empty")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ValueError(
            f"probs has {p.shape[1]} columns but there are {num_classes} class names; "
            "pass one probability column per class, in class_names order"
        )
    integral = y.dtype.kind in "iub" or (
        y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (np.mod(y, 1) == 0)))
    )
    if not integral:
        raise ValueError("y_true must hold integer class indices (not class names or fractions)")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= p.shape[1]))
    if len(bad):
        raise ValueError(
            f"y_true row {bad[0]} has label {y[bad[0]]}, outside [0, {p.shape[1] - 1}]"
        )
    finite = np.isfinite(p).all(axis=1)
    if not finite.all():
        raise ValueError(f"probs row {np.flatnonzero(~finite)[0]} has NaN or infinite values")
    neg = np.flatnonzero((p < -PROB_SUM_ATOL).any(axis=1))
    if len(neg):
        raise ValueError(
            f"probs row {neg[0]} has negative entries: pass softmax probabilities, not logits"
        )
    sums = p.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_ATOL)
    if len(off):
        raise ValueError(
            f"probs row {off[0]} sums to {sums[off[0]]:.6f}, not 1 (±{PROB_SUM_ATOL}): "
            "pass softmax probabilities (apply softmax to logits first)"
        )
    return y, p


def malignant_labels(y_true: np.ndarray, malignant_index: Sequence[int]) -> np.ndarray:
    """1 where the true class is malignant, else 0 (int [N])."""
    return np.isin(np.asarray(y_true), list(malignant_index)).astype(np.int64)


# ----------------------------------------------------------------------------- AUROC


def binary_auroc(y: np.ndarray, score: np.ndarray) -> tuple[float | None, str | None]:
    """Area under the ROC curve via scikit-learn; (None, reason) when one class is missing."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        which = "positive" if n_pos == 0 else "negative"
        return None, f"undefined: no {which} samples ({len(y)} samples, {n_pos} positive)"
    return float(roc_auc_score(y, score)), None


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each column of x [N, K], ties sharing their average rank.

    Same result as scipy.stats.rankdata(x, axis=0), several times faster for the bootstrap:
    one argsort over contiguous rows of x.T, then every tie run is located with running
    maxima/minima instead of per-column Python loops.
    """
    xt = np.ascontiguousarray(x.T)  # [K, N]: sorting along the last, contiguous axis is fast
    n = xt.shape[1]
    order = np.argsort(xt, axis=1)  # tie order is irrelevant: ties get the same average rank
    s = np.take_along_axis(xt, order, axis=1)
    pos = np.arange(n)[None, :]
    starts = np.ones_like(s, dtype=bool)  # first element of each tie run
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones_like(s, dtype=bool)  # last element of each tie run
    ends[:, :-1] = starts[:, 1:]
    run_start = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    run_end = np.minimum.accumulate(np.where(ends, pos, n)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(xt.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (run_start + run_end) / 2.0 + 1.0, axis=1)
    return ranks.T


def _rank_auroc(ranks: np.ndarray, pos: np.ndarray) -> float | None:
    """Mann-Whitney AUROC from tie-averaged ranks; None when a class is missing."""
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----------------------------------------------------------------------------- calibration


def reliability_bins(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Top-label reliability statistics on equal-width confidence bins.

    Bin b covers (b/n_bins, (b+1)/n_bins]; a confidence of exactly 0 falls in the first bin.
    Returns edges [n_bins+1], count, accuracy and mean confidence per bin (NaN for empty bins).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right=True against the interior edges gives the half-open (lo, hi] bins described above.
    which = np.digitize(conf, edges[1:-1], right=True)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / count
        confidence = np.bincount(which, weights=conf, minlength=n_bins) / count
    return {"edges": edges, "count": count, "accuracy": accuracy, "confidence": confidence}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (bin share) * |accuracy - mean confidence|.

    Own numpy version rather than torchmetrics': the bootstrap calls it thousands of times on
    numpy arrays, and the reliability plot needs the same bins (`reliability_bins`).
    """
    bins = reliability_bins(y_true, probs, n_bins)
    filled = bins["count"] > 0
    share = bins["count"][filled] / bins["count"].sum()
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((share * gap).sum())


# ----------------------------------------------------------------------------- thresholds


def threshold_key(specificity: float) -> str:
    """The name a threshold is stored under, e.g. 0.9 -> "spec@0.90"."""
    return f"spec@{specificity:.2f}"


def choose_threshold(y_malignant: np.ndarray, risk: np.ndarray, specificity: float) -> float:
    """Smallest-risk threshold whose specificity on these data is at least `specificity`.

    Rule: a sample is called malignant when risk >= threshold. Among all thresholds that reach
    the target specificity, sensitivity is highest for the lowest one, so we take the k-th
    smallest benign risk (k = ceil(specificity * n_benign)) and put the threshold halfway to the
    next larger risk value present in the data (benign or malignant). Halfway rather than at the
    next value keeps the same validation sensitivity/specificity while leaving a margin on both
    sides for new data.
    Ties: benign samples tied at that k-th value all fall below the threshold, so the specificity
    reached can exceed the target. When no larger value exists the threshold is placed just above
    the largest risk (nothing is called malignant). A target of 0 returns the smallest risk
    (everything called malignant).
    """
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"target specificity must be in [0, 1], got {specificity}")
    y = np.asarray(y_malignant).astype(bool)
    r = np.asarray(risk, dtype=np.float64)
    if len(y) != len(r):
        raise ValueError(f"y_malignant has {len(y)} rows but risk has {len(r)}")
    benign = np.sort(r[~y])
    if len(benign) == 0:
        raise ValueError(
            "cannot choose a threshold at a target specificity: the data have no benign samples"
        )
    # Small tolerance so that 0.9 * 10 counts as 9, not 9.000000000000002 -> 10.
    k = int(math.ceil(specificity * len(benign) - 1e-9))
    if k <= 0:
        return float(r.min())
    cut = benign[k - 1]
    above = r[r > cut]
    if len(above) == 0:
        return float(np.nextafter(cut, np.inf))
    return float((cut + above.min()) / 2.0)


def choose_thresholds(
    y_malignant: np.ndarray,
    risk: np.ndarray,
    specificities: Sequence[float] = (0.90, 0.95),
) -> dict[str, float]:
    """Thresholds on malignant risk chosen on VALIDATION data: {"spec@0.90": t, ...}.

    See `choose_threshold` for the rule; a higher target never gives a lower threshold.
    """
    return {threshold_key(s): choose_threshold(y_malignant, risk, s) for s in specificities}


def operating_point(y_malignant: np.ndarray, risk: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity/specificity (and counts) when calling malignant at risk >= threshold."""
    y = np.asarray(y_malignant).astype(bool)
    called = np.asarray(risk, dtype=np.float64) >= threshold
    tp = int((called & y).sum())
    fn = int((~called & y).sum())
    tn = int((~called & ~y).sum())
    fp = int((called & ~y).sum())
    return {
        "threshold": float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
    }


def sensitivity_at_specificity(
    y_malignant: np.ndarray, risk: np.ndarray, specificity: float
) -> dict[str, Any]:
    """Choose the threshold on these data and report the operating point it gives here.

    Optimistic when used on the evaluation set itself: for test reporting, choose thresholds on
    validation data (`choose_thresholds`) and apply them with `operating_point`.
    """
    return operating_point(y_malignant, risk, choose_threshold(y_malignant, risk, specificity))


# ----------------------------------------------------------------------------- full report


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    # scikit-learn averages recall over classes present in y_true and warns when y_pred has
    # others; that is the definition we want, so the warning is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, pred))


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    malignant_index: Sequence[int],
    thresholds: Mapping[str, float] | None = None,
    ece_bins: int = 15,
) -> dict[str, Any]:
    """Full metric report (JSON-serialisable) for one model on one evaluation set.

    - accuracy; balanced_accuracy = mean recall over classes present in y_true;
      macro_f1 over classes present in y_true or predicted (scikit-learn's default label set).
    - per_class[name]: support, sensitivity (recall; None without positives), specificity
      (None without negatives), precision (None if never predicted), f1, auroc (OvR).
    - macro_auroc: mean OvR AUROC over classes present in y_true (classes absent from y_true
      are None and excluded); None with a reason if fewer than two classes are present.
    - malignant_auroc: AUROC of malignant risk (sum of malignant probabilities).
    - ece: top-label expected calibration error on `ece_bins` equal-width bins.
    - confusion_matrix: rows = true class, columns = predicted class, in class_names order.
    - operating_points[key]: malignant sensitivity/specificity at each given threshold
      (thresholds come from `choose_thresholds` on validation data).
    """
    names = list(class_names)
    y, p = check_inputs(y_true, probs, len(names))
    num_classes = len(names)
    pred = p.argmax(axis=1)
    labels = np.arange(num_classes)
    cm = confusion_matrix(y, pred, labels=labels)
    present = [c for c in labels if (y == c).any()]
    n = len(y)

    per_class: dict[str, dict[str, Any]] = {}
    class_auroc: dict[str, float | None] = {}
    for c, name in enumerate(names):
        tp = int(cm[c, c])
        support = int(cm[c].sum())
        predicted = int(cm[:, c].sum())
        negatives = n - support
        tn = negatives - (predicted - tp)
        auroc, reason = binary_auroc(y == c, p[:, c])
        class_auroc[name] = auroc
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = (
            2 * tp / (support + predicted) if support + predicted else None
        )  # = 2PR/(P+R), defined even when one of P, R is
        per_class[name] = {
            "support": support,
            "predicted": predicted,
            "sensitivity": recall,
            "specificity": tn / negatives if negatives else None,
            "precision": precision,
            "f1": f1,
            "auroc": auroc,
            "auroc_note": reason,
        }

    if len(present) >= 2:
        macro_auroc: float | None = float(np.mean([class_auroc[names[c]] for c in present]))
        macro_note = None
    else:
        macro_auroc, macro_note = None, "undefined: fewer than two classes present in y_true"

    mal_index = list(malignant_index)
    y_mal = malignant_labels(y, mal_index)
    risk = malignant_risk(p, mal_index)
    mal_auroc, mal_note = binary_auroc(y_mal, risk)

    result: dict[str, Any] = {
        "n": n,
        "class_names": names,
        "malignant_classes": [names[i] for i in mal_index],
        "n_malignant": int(y_mal.sum()),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "macro_auroc": macro_auroc,
        "macro_auroc_classes": [names[c] for c in present],
        "macro_auroc_note": macro_note,
        "malignant_auroc": mal_auroc,
        "malignant_auroc_note": mal_note,
        "ece": expected_calibration_error(y, p, ece_bins),
        "ece_bins": ece_bins,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }
    if thresholds:
        result["operating_points"] = {
            key: operating_point(y_mal, risk, float(t)) for key, t in thresholds.items()
        }
    return result


# ----------------------------------------------------------------------------- fast scalars


def scalar_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    malignant_index: Sequence[int],
    thresholds: Mapping[str, float] | None = None,
    ece_bins: int = 15,
) -> dict[str, float | None]:
    """Headline scalars with numpy only (no input checks): for the bootstrap's inner loop.

    Same definitions as `classification_metrics`: accuracy, balanced_accuracy, macro_f1,
    macro_auroc, malignant_auroc, ece and, per threshold key K, "malignant_sensitivity[K]" and
    "malignant_specificity[K]". Undefined values are None.
    """
    y = np.asarray(y_true)
    p = np.asarray(probs)
    n, num_classes = p.shape
    pred = p.argmax(axis=1)
    cm = np.bincount(y * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    present = support > 0
    in_f1 = present | (predicted > 0)  # scikit-learn's default label set for macro F1

    mal = list(malignant_index)
    risk = p[:, mal].sum(axis=1)
    # Rank every probability column and the risk at once; ties get their average rank.
    ranks = average_ranks(np.column_stack([p, risk]))
    aurocs = [_rank_auroc(ranks[:, c], y == c) for c in range(num_classes) if present[c]]
    y_mal = np.isin(y, mal)

    out: dict[str, float | None] = {
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(np.mean(tp[present] / support[present])),
        "macro_f1": float(np.mean(2 * tp[in_f1] / (support[in_f1] + predicted[in_f1]))),
        "macro_auroc": float(np.mean(aurocs)) if len(aurocs) >= 2 else None,
        "malignant_auroc": _rank_auroc(ranks[:, -1], y_mal),
        "ece": expected_calibration_error(y, p, ece_bins),
    }
    for key, t in (thresholds or {}).items():
        called = risk >= t
        n_pos = int(y_mal.sum())
        n_neg = n - n_pos
        out[f"malignant_sensitivity[{key}]"] = (
            float((called & y_mal).sum() / n_pos) if n_pos else None
        )
        out[f"malignant_specificity[{key}]"] = (
            float((~called & ~y_mal).sum() / n_neg) if n_neg else None
        )
    return out


def scalar_metric_fn(
    malignant_index: Sequence[int],
    thresholds: Mapping[str, float] | None = None,
    ece_bins: int = 15,
    required_classes: Sequence[int] | None = None,
) -> Callable[[np.ndarray, np.ndarray], dict[str, float | None]]:
    """`metric_fn(y_true, probs)` for the bootstrap: `scalar_metrics` with these settings.

    `required_classes` (the classes of the full evaluation set): a resample that lost one of
    them gives no balanced accuracy or macro AUROC, instead of an average over fewer classes,
    which is another quantity (1/6 instead of 1/7 for a constant classifier) and would pull
    the interval away from the point estimate.
    """
    mal = list(malignant_index)
    stored = dict(thresholds or {})
    required = np.asarray(
        sorted([] if required_classes is None else required_classes), dtype=np.int64
    )

    def metric_fn(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
        out = scalar_metrics(y_true, probs, mal, stored, ece_bins)
        if len(required) and not np.isin(required, y_true).all():
            out["balanced_accuracy"] = None
            out["macro_auroc"] = None
        return out

    return metric_fn


def flatten_metrics(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The scalar entries of a `classification_metrics` report, keyed like `scalar_metrics`."""
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "malignant_auroc", "ece")
    out = {k: report[k] for k in keys}
    for key, point in (report.get("operating_points") or {}).items():
        out[f"malignant_sensitivity[{key}]"] = point["sensitivity"]
        out[f"malignant_specificity[{key}]"] = point["specificity"]
    return out


# ----------------------------------------------------------------------------- subgroups


def age_band(age: Any) -> str:
    """Map an age in years to one of AGE_BANDS; missing or unparsable ages -> "unknown"."""
    try:
        value = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if not math.isfinite(value) or value < 0:
        return UNKNOWN
    if value < 30:
        return "<30"
    if value < 45:
        return "30-44"
    if value < 60:
        return "45-59"
    if value < 75:
        return "60-74"
    return "75+"


def _group_values(rows: pd.DataFrame, attribute: str) -> pd.Series:
    if attribute == "age_band" and "age_band" not in rows.columns:
        if "age" not in rows.columns:
            raise ValueError("subgroup 'age_band' needs an 'age' or 'age_band' column in the rows")
        return rows["age"].map(age_band)
    if attribute not in rows.columns:
        raise ValueError(
            f"subgroup attribute '{attribute}' is not a column of the rows "
            f"(columns: {', '.join(map(str, rows.columns))})"
        )
    values = rows[attribute].astype("object")
    blank = values.isna() | values.astype(str).str.strip().isin(["", "nan", "None"])
    return values.where(~blank, UNKNOWN).astype(str)


def _sort_key(attribute: str, value: str) -> tuple[int, str]:
    if attribute == "age_band" and value in AGE_BANDS:
        return (AGE_BANDS.index(value), value)
    return (1 if value == UNKNOWN else 0, value)


def subgroup_metrics(
    rows: pd.DataFrame,
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    malignant_index: Sequence[int],
    threshold: float | None = None,
    by: Sequence[str] = ("sex", "age_band", "site"),
) -> list[dict[str, Any]]:
    """Per-subgroup counts and metrics; one dict per (attribute, value), table-ready.

    `rows` is the evaluation manifest aligned with y_true/probs (same order). "age_band" is
    derived from an "age" column (bands <30, 30-44, 45-59, 60-74, 75+, unknown) when not present.
    Each entry: attribute, group, n, n_malignant, balanced_accuracy (over classes present in the
    subgroup), malignant_auroc (None if the subgroup lacks either class) and, when a stored
    threshold is given, malignant_sensitivity / malignant_specificity at it. Small subgroups give
    noisy numbers: read them with `n`.
    """
    y, p = check_inputs(y_true, probs)
    if len(rows) != len(y):
        raise ValueError(f"rows has {len(rows)} entries but y_true has {len(y)}: align them")
    rows = rows.reset_index(drop=True)
    pred = p.argmax(axis=1)
    y_mal = malignant_labels(y, malignant_index)
    risk = malignant_risk(p, malignant_index)
    table: list[dict[str, Any]] = []
    for attribute in by:
        values = _group_values(rows, attribute).to_numpy()
        for value in sorted(set(values), key=lambda v: _sort_key(attribute, v)):
            mask = values == value
            entry: dict[str, Any] = {
                "attribute": attribute,
                "group": value,
                "n": int(mask.sum()),
                "n_malignant": int(y_mal[mask].sum()),
                "balanced_accuracy": _balanced_accuracy(y[mask], pred[mask]),
                "malignant_auroc": binary_auroc(y_mal[mask], risk[mask])[0],
            }
            if threshold is not None:
                point = operating_point(y_mal[mask], risk[mask], threshold)
                entry["malignant_sensitivity"] = point["sensitivity"]
                entry["malignant_specificity"] = point["specificity"]
            table.append(entry)
    return table
