"""Figures: each writes a real PNG of the expected pixel size with something drawn on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermae.evaluate import plots
from dermae.metrics import classification_metrics

NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MAL = [0, 1, 4]


def check_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.size == size
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    # something drawn: many distinct grey levels and a fair share of non-white pixels
    assert len(np.unique(pixels)) > 20
    assert (pixels < 250).mean() > 0.02
    return pixels


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 300)
    logits = rng.normal(size=(300, 7))
    logits[np.arange(300), y] += 1.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_confusion_matrix(tmp_path: Path, case) -> None:
    y, p = case
    cm = classification_metrics(y, p, NAMES, MAL)["confusion_matrix"]
    out = plots.plot_confusion_matrix(cm, NAMES, tmp_path / "sub" / "cm.png")
    assert out == tmp_path / "sub" / "cm.png"
    check_png(out, (1200, 550))
    with pytest.raises(ValueError, match="does not match 3 class names"):
        plots.plot_confusion_matrix(cm, NAMES[:3], tmp_path / "bad.png")


def test_confusion_matrix_with_empty_row(tmp_path: Path) -> None:
    cm = [[3, 1, 0], [0, 0, 0], [1, 0, 2]]  # a class with no images must not divide by zero
    check_png(plots.plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png"), (1200, 550))


def test_roc(tmp_path: Path, case) -> None:
    y, p = case
    out = plots.plot_roc(y, p, NAMES, MAL, tmp_path / "roc.png", {"spec@0.90": 0.6})
    check_png(out, (1200, 550))
    # one class only: still a figure, no crash
    single = plots.plot_roc(np.zeros(5, int), p[:5], NAMES, MAL, tmp_path / "roc1.png")
    check_png(single, (1200, 550))


def test_reliability(tmp_path: Path, case) -> None:
    y, p = case
    check_png(plots.plot_reliability(y, p, tmp_path / "rel.png", n_bins=10), (600, 700))


def test_loss_curves_from_jsonl(tmp_path: Path) -> None:
    records = [{"step": s, "epoch": s / 10, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 41)]
    records += [{"step": s, "val_balanced_accuracy": s / 50, "val_auroc": 0.5 + s / 100}
                for s in (10, 20, 30, 40)]  # fmt: skip
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert plots.read_jsonl(jsonl) == records
    out = plots.plot_loss_curves(jsonl, tmp_path / "loss.png")
    check_png(out, (1200, 450))
    check_png(plots.plot_loss_curves(records, tmp_path / "loss2.png"), (1200, 450))
    jsonl.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        plots.read_jsonl(jsonl)


def test_class_counts(tmp_path: Path) -> None:
    before = {"akiec": 230, "bcc": 360, "nv": 4700}
    after = {"akiec": 1000, "bcc": 1000, "nv": 4700}
    out = plots.plot_class_counts(before, tmp_path / "counts.png", after=after, log_scale=True)
    check_png(out, (800, 450))
    check_png(plots.plot_class_counts(before, tmp_path / "c2.png"), (800, 450))
