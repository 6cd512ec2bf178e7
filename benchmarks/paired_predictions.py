"""Paired lesion bootstrap of saved test predictions against any reference, not only (b).

The ablation pairs every variant with (b). To ask whether one student beats another (the same
recipe with a larger teacher, say), pair their `predictions.csv` files directly: the same
images, the same lesion resamples, the same metrics as `dermae ablate`.

    python benchmarks/paired_predictions.py runs/cpu-full \
        --reference d_2member=runs/cpu-full-kd-seeds-0/ablate/eval/d_dermae/predictions.csv \
        --model d_4member=runs/cpu-full/ablate/eval/d_dermae/predictions.csv \
        --out benchmarks/results/cpu_full_baseline_seeds_paired.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from dermae.data.prepared import load_prepared
from dermae.evaluate.ablation_text import PAIRED
from dermae.evaluate.paired import REFERENCE, ROC_SENSITIVITY, paired_against_reference

SHOWN = ("balanced_accuracy", "malignant_auroc", ROC_SENSITIVITY, "macro_auroc")


def _named(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=path/predictions.csv, got '{text}'")
    return name, Path(path)


def paired(
    run_dir: Path,
    reference: tuple[str, Path],
    models: list[tuple[str, Path]],
    resamples: int,
    seed: int,
    ece_bins: int = 15,
) -> dict[str, Any]:
    """`model - reference` for every model, as `dermae ablate` pairs variants with (b)."""
    frames = {REFERENCE: pd.read_csv(reference[1])}
    for name, path in models:
        if name == reference[0]:
            raise ValueError(f"model name '{name}' is the reference's name")
        frames[name] = pd.read_csv(path)
    malignant = load_prepared(run_dir, with_synthetic=False).malignant_index
    comparisons = paired_against_reference(frames, malignant, ece_bins, resamples, seed)
    return {
        "reference": {"name": reference[0], "predictions": str(reference[1])},
        "models": {name: str(path) for name, path in models},
        "resamples": resamples,
        "seed": seed,
        "paired": {
            f"{key.split(' - ')[0]} - {reference[0]}": value for key, value in comparisons.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    header = "| comparison | " + " | ".join(PAIRED[k] for k in SHOWN) + " |"
    lines = [header, "|" + "---|" * (len(SHOWN) + 1)]
    for name, diffs in result["paired"].items():
        cells = []
        for key in SHOWN:
            entry = diffs.get(key) or {}
            lo, hi = entry.get("ci") or (None, None)
            if entry.get("diff") is None or lo is None:
                cells.append("n/a")
            else:
                cells.append(f"{entry['diff']:+.3f} ({lo:+.3f} to {hi:+.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run whose prepared test split was scored")
    parser.add_argument("--reference", type=_named, required=True, metavar="NAME=CSV")
    parser.add_argument("--model", type=_named, action="append", required=True, metavar="NAME=CSV")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = paired(args.run_dir, args.reference, args.model, args.resamples, args.seed)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
