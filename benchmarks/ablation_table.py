"""Render an `ablate/ablation.json` as the verdict table of BENCHMARKS.md and the README.

Numbers are copied by code, not by hand:

    python benchmarks/ablation_table.py benchmarks/results/cpu_full_ablation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dermae.evaluate.ablation_text import LABELS

BOLD = ("b_simple_fix", "d_dermae")
# (paired key, scalar key, column title)
COLUMNS = (
    ("balanced_accuracy", "balanced_accuracy", "balanced accuracy"),
    ("malignant_auroc", "malignant_auroc", "malignant AUROC"),
    ("malignant_roc_sensitivity@spec0.90", None, "mal. sens. @ 90 % spec. (test ROC)"),
)


def _ci(lo: float | None, hi: float | None, signed: bool) -> str:
    if lo is None or hi is None:
        return "n/a"
    return f"{lo:+.3f} to {hi:+.3f}" if signed else f"{lo:.3f}–{hi:.3f}"


def _value(result: dict[str, Any], key: str | None) -> str:
    if key is None or result["scalars"].get(key) is None:
        return ""
    ci = result["ci95"].get(key) or [None, None]
    return f"{result['scalars'][key]:.3f} ({_ci(ci[0], ci[1], signed=False)})"


def _delta(paired: dict[str, Any] | None, key: str) -> str:
    entry = (paired or {}).get(key)
    if not entry or entry.get("diff") is None:
        return "—"
    lo, hi = entry.get("ci") or (None, None)
    return f"{entry['diff']:+.3f} ({_ci(lo, hi, signed=True)})"


def table(summary: dict[str, Any]) -> str:
    reference = summary["reference"]
    header = ["model"]
    for _, scalar, title in COLUMNS:
        header += ([title] if scalar else []) + [f"Δ {title} vs (b)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in summary["results"].items():
        paired = summary["paired_bootstrap"].get(f"{name} - {reference}")
        label = LABELS.get(name, name)
        cells = [f"**{label}**" if name in BOLD else label]
        for paired_key, scalar, _ in COLUMNS:
            if scalar:
                cells.append(_value(result, scalar))
            cells.append(_delta(paired, paired_key))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ablation_json", type=Path)
    args = parser.parse_args()
    summary = json.loads(args.ablation_json.read_text())
    print(table(summary))
    print()
    print(summary["verdict"])


if __name__ == "__main__":
    main()
