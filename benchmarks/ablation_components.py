"""What each component adds, for an ablation that finished before the ablate stage reported it.

Reads the predictions the ablate stage already wrote (`ablate/eval/<variant>` for seed 0,
`ablate/eval_seeds/<variant>_seed_plus_<k>` for the other seeds); no model runs:

    python benchmarks/ablation_components.py runs/cpu-full-phone \\
        --out benchmarks/results/cpu_full_phone_components.json

Same pairs and intervals as `dermae.evaluate.components` (which the ablate stage now calls).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dermae.data.prepared import load_prepared
from dermae.evaluate.components import component_effects, component_lines
from dermae.evaluate.paired import REFERENCE, paired_metric_fn


def variant_frames(ablate: Path, names: list[str]) -> dict[str, list[pd.DataFrame]]:
    """Each variant's test predictions: seed 0, then every extra seed found, in order."""
    frames = {}
    for name in names:
        first = ablate / "eval" / name / "predictions.csv"
        if not first.exists():
            continue
        found = [pd.read_csv(first)]
        k = 1
        while (
            extra := ablate / "eval_seeds" / f"{name}_seed_plus_{k}" / "predictions.csv"
        ).exists():
            found.append(pd.read_csv(extra))
            k += 1
        frames[name] = found
    return frames


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    ablate = args.run_dir / "ablate"
    summary = json.loads((ablate / "ablation.json").read_text())
    frames = variant_frames(ablate, list(summary["models"]))
    if REFERENCE not in frames:
        raise SystemExit(f"{ablate / 'eval' / REFERENCE} has no predictions.csv")
    prepared = load_prepared(args.run_dir, with_synthetic=False)
    targets = frames[REFERENCE][0]["target"].to_numpy()
    metric_fn = paired_metric_fn(prepared.malignant_index, 15, np.unique(targets))
    effects = component_effects(frames, metric_fn, args.resamples, args.seed)
    print("\n".join(component_lines(effects)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": str(args.run_dir), "components": effects}, indent=2))


if __name__ == "__main__":
    main()
