"""Evaluation figures as PNG files.

Figures are built with `matplotlib.figure.Figure` directly (rendered by the Agg canvas), not
pyplot: no global figure state, no GUI backend, safe in servers and parallel tests. Files are
saved without tight bounding boxes so that a figure is exactly figsize * dpi pixels.
Every function returns the Path it wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from dermae.metrics import (
    malignant_labels,
    malignant_risk,
    operating_point,
    reliability_bins,
)

DPI = 100


def _save(fig: Figure, out_path: str | Path) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    out_path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Two panels: raw counts and row-normalised (recall on the diagonal). Rows = true class."""
    counts = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {k} class names")
    rows = counts.sum(axis=1, keepdims=True)
    normed = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    fig = _figure(12, 5.5)
    fig.suptitle(title)
    panels = fig.subplots(1, 2)
    for ax, data, label, fmt in (
        (panels[0], counts, "counts", "{:d}"),
        (panels[1], normed, "row-normalised", "{:.2f}"),
    ):
        shown = data / max(data.max(), 1) if label == "counts" else data
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(label)
        ax.set_xticks(range(k), class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(k):
            for j in range(k):
                value = data[i, j]
                ax.text(
                    j,
                    i,
                    fmt.format(int(value) if label == "counts" else value),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shown[i, j] > 0.5 else "black",
                )
    return _save(fig, out_path)


def plot_roc(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    malignant_index: Sequence[int],
    out_path: str | Path,
    thresholds: Mapping[str, float] | None = None,
    title: str = "ROC curves",
) -> Path:
    """Left: malignant-vs-benign ROC with the stored operating points marked.
    Right: one-vs-rest ROC per class (classes absent from y_true, or the only class, skipped)."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    fig = _figure(12, 5.5)
    fig.suptitle(title)
    left, right = fig.subplots(1, 2)

    y_mal = malignant_labels(y, malignant_index)
    risk = malignant_risk(p, malignant_index)
    if 0 < y_mal.sum() < len(y_mal):
        fpr, tpr, _ = roc_curve(y_mal, risk)
        left.plot(fpr, tpr, color="C3", label=f"malignant vs benign (AUC {auc(fpr, tpr):.3f})")
        for i, (key, t) in enumerate((thresholds or {}).items()):
            point = operating_point(y_mal, risk, t)
            x, s = 1 - point["specificity"], point["sensitivity"]
            label = f"{key} (t={t:.3f}): sens {s:.2f}, spec {1 - x:.2f}"
            left.plot(x, s, "o", color=f"C{i}", label=label)
    else:
        left.text(0.5, 0.5, "undefined: one class only", ha="center", va="center")
    left.set_title("malignant vs benign")

    for c, name in enumerate(class_names):
        positives = y == c
        if 0 < positives.sum() < len(y):
            fpr, tpr, _ = roc_curve(positives, p[:, c])
            right.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    right.set_title("one-vs-rest per class")

    for ax in (left, right):
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("1 - specificity (false positive rate)")
        ax.set_ylabel("sensitivity (true positive rate)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_path)


def plot_reliability(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    out_path: str | Path,
    n_bins: int = 15,
    title: str = "Reliability diagram (top label)",
) -> Path:
    """Accuracy per confidence bin against the diagonal, with the bin counts below."""
    bins = reliability_bins(np.asarray(y_true), np.asarray(probs), n_bins)
    edges, count = bins["edges"], bins["count"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = count > 0
    share = count / count.sum()
    ece = float(np.sum(share[filled] * np.abs(bins["accuracy"] - bins["confidence"])[filled]))

    fig = _figure(6, 7)
    fig.suptitle(f"{title}\nECE = {ece:.3f} ({n_bins} bins)")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.bar(
        centers[filled],
        bins["accuracy"][filled],
        width=width,
        edgecolor="black",
        label="accuracy in bin",
    )
    # Mean confidence per bin as points: the vertical distance to the bar top is the gap that
    # ECE averages (weighted by the bin counts shown below).
    top.plot(centers[filled], bins["confidence"][filled], "o", color="C3", label="mean confidence")
    top.plot([0, 1], [0, 1], ":", color="grey")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, count, width=width, color="grey", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("images")
    return _save(fig, out_path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file (blank lines skipped)."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not valid JSON: {err}") from err
    return records


def plot_loss_curves(
    history: Sequence[Mapping[str, Any]] | str | Path,
    out_path: str | Path,
    loss_key: str = "loss",
    val_prefix: str = "val_",
    title: str = "Training curves",
) -> Path:
    """Training loss against step (left) and every `val_*` metric against step (right).

    `history` is the training loop's metrics.jsonl (a path) or its records: dicts with "step",
    usually "loss", and on evaluation steps "val_<name>" entries.
    """
    records = read_jsonl(history) if isinstance(history, (str, Path)) else list(history)
    fig = _figure(12, 4.5)
    fig.suptitle(title)
    left, right = fig.subplots(1, 2)

    train = [(r["step"], r[loss_key]) for r in records if "step" in r and loss_key in r]
    if train:
        steps, losses = zip(*train, strict=True)
        left.plot(steps, losses, color="C0")
    left.set_title(loss_key)
    left.set_xlabel("step")

    val_keys = sorted({k for r in records for k in r if k.startswith(val_prefix)})
    for i, key in enumerate(val_keys):
        points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
        if points:
            steps, values = zip(*points, strict=True)
            right.plot(steps, values, "o-", color=f"C{i}", label=key, markersize=3)
    right.set_title("validation")
    right.set_xlabel("step")
    if val_keys:
        right.legend(fontsize=8)
    return _save(fig, out_path)


def plot_class_counts(
    before: Mapping[str, int],
    out_path: str | Path,
    after: Mapping[str, int] | None = None,
    title: str = "Training images per class",
    log_scale: bool = False,
) -> Path:
    """Bars of images per class before (real only) and after balancing (real + synthetic)."""
    names = list(before)
    if after is not None:
        names += [n for n in after if n not in before]
    x = np.arange(len(names))
    series = [("before", before)] + ([("after balancing", after)] if after is not None else [])
    width = 0.8 / len(series)
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    for i, (label, counts) in enumerate(series):
        values = [int(counts.get(n, 0)) for n in names]
        offset = (i - (len(series) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width=width, label=label)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylabel("images")
    if log_scale:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return _save(fig, out_path)
