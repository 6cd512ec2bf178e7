"""The checkpoint-rule probe over seeds: one Markdown row per seed and rule, then the mean.

    python benchmarks/selection_table.py benchmarks/results/demo_selection_seed*.json

Each file is one `benchmarks/selection_probe.py` summary (one seed of (b) and the student).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

RULES = ("best", "last")


def _ci(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    return f"{entry['diff']:+.3f} ({lo:+.3f} to {hi:+.3f})"


def rows(summaries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| seed | rule | (b) step | (d) step | (b) BMA | (d) BMA | Δ BMA (d) − (b) | "
        "Δ malignant AUROC | Δ macro AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        seed = summary["seeds"]["b"]
        for rule in RULES:
            steps = {
                key: (summary["best_by_validation"][key]["step"] if rule == "best" else "last")
                for key in ("b", "d")
            }
            diffs = summary["d_minus_b"][rule]
            lines.append(
                f"| {seed} | {rule} | {steps['b']} | {steps['d']} | "
                f"{summary['test'][f'b_{rule}']['balanced_accuracy']:.3f} | "
                f"{summary['test'][f'd_{rule}']['balanced_accuracy']:.3f} | "
                f"{_ci(diffs['balanced_accuracy'])} | {_ci(diffs['malignant_auroc'])} | "
                f"{_ci(diffs['macro_auroc'])} |"
            )
    return lines


def means(summaries: list[dict[str, Any]]) -> list[str]:
    """Mean and sample SD over seeds of each test score and of (d) − (b)."""
    lines = []
    for rule in RULES:
        parts = []
        for label, values in (
            ("(b)", [s["test"][f"b_{rule}"]["balanced_accuracy"] for s in summaries]),
            ("(d)", [s["test"][f"d_{rule}"]["balanced_accuracy"] for s in summaries]),
            (
                "(d) − (b)",
                [s["d_minus_b"][rule]["balanced_accuracy"]["diff"] for s in summaries],
            ),
        ):
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            parts.append(f"{label} {statistics.mean(values):+.3f} ± {sd:.3f}")
        lines.append(f"- {rule}, {len(summaries)} seeds, mean ± SD: " + "; ".join(parts))
    return lines


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        raise SystemExit(__doc__)
    summaries = sorted(
        (json.loads(p.read_text()) for p in paths), key=lambda s: s["seeds"]["b"] or 0
    )
    print("\n".join(rows(summaries) + [""] + means(summaries)))


if __name__ == "__main__":
    main()
