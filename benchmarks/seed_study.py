"""Several seeds per recipe, paired on the test split: does a recipe beat (b) on average?

One trained model is one draw of its recipe. At cpu-full three seeds of (b) alone span 0.637 to
0.676 test balanced accuracy (BENCHMARKS section 22), more than any effect the one-seed
ablation measured. So each recipe here is a list of classifier folders, one per seed:

    python benchmarks/seed_study.py runs/cpu-full --reference b \\
        --recipe b=runs/cpu-full/baseline/model,runs/cpu-full/baseline_seeds/seed_plus_1/model \\
        --recipe d=runs/cpu-full/student/model,runs/cpu-full-kd-seed-1/student/model \\
        --out benchmarks/results/cpu_full_seed_study.json

Every model scores validation and test once (argmax rule, as the ablation's paired table).
Per recipe: the mean and spread over seeds on both splits. Among the non-reference recipes the
one with the best mean *validation* balanced accuracy is the one a user may pick; test is
read only after. Each recipe minus the reference, on the mean over seeds:

- `lesion`: lesions resampled (the same resamples for every model), seeds held fixed: the
  test-sampling noise of these particular models;
- `lesion_and_seed`: each resample also redraws, with replacement, the seeds within every
  recipe, so the interval holds the seed spread too (coarse with three seeds a side).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from dermae.classify.common import predict_probs
from dermae.classify.decision import RULES, fit_shift, shift_probs
from dermae.classify.model import load_classifier
from dermae.data.prepared import load_prepared
from dermae.evaluate.ablation_text import PAIRED
from dermae.evaluate.paired import ROC_SENSITIVITY, paired_metric_fn
from dermae.evaluate.run import model_targets
from dermae.evaluate.seeds import recipe_argument, seed_paired

SPLITS = ("val", "test")
SHOWN = ("balanced_accuracy", "malignant_auroc", ROC_SENSITIVITY, "macro_auroc")
CHOOSE_ON = "balanced_accuracy"


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd, "min": float(arr.min()), "max": float(arr.max())}


def study(
    run_dir: Path,
    recipes: dict[str, list[Path]],
    reference: str,
    resamples: int,
    seed: int,
    ece_bins: int = 15,
    bars: dict[str, list[Path]] | None = None,
    decision: str = "argmax",
) -> dict[str, Any]:
    """`bars` (a teacher, say) are scored and paired like recipes but are no candidates.

    `decision` (see `dermae.classify.decision`): each model's per-class log shift is fitted on
    its own validation probabilities and applied to both splits; the test split never fits it.
    """
    if reference not in recipes:
        raise SystemExit(f"--reference {reference}: no --recipe of that name")
    bars = bars or {}
    if set(bars) & set(recipes):
        raise SystemExit(f"--bar and --recipe share names: {sorted(set(bars) & set(recipes))}")
    candidates = [n for n in recipes if n != reference]
    recipes = {**recipes, **bars}
    prepared = load_prepared(run_dir, with_synthetic=False)
    rows = {s: prepared.rows(s).reset_index(drop=True) for s in SPLITS}
    targets = {s: model_targets(rows[s], prepared.class_names)[0] for s in SPLITS}
    metric_fn = {
        s: paired_metric_fn(prepared.malignant_index, ece_bins, np.unique(targets[s]))
        for s in SPLITS
    }
    train_targets = model_targets(prepared.rows("train"), prepared.class_names)[0]
    prior = np.bincount(train_targets, minlength=len(prepared.class_names)) + 1.0
    probs: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in SPLITS}
    per_model: dict[str, list[dict[str, Any]]] = {}
    for name, folders in recipes.items():
        per_model[name] = []
        for folder in folders:
            model, config = load_classifier(folder)
            if config["class_names"] != prepared.class_names:
                raise SystemExit(f"{folder} knows {config['class_names']}, not this run's classes")
            entry: dict[str, Any] = {"model": str(folder)}
            if "train_seed" in config:  # recorded by models trained since Dec 2026
                entry["train_seed"] = config["train_seed"]
            own = prepared.at_size(int(config["image_size"]))  # same rows, the model's size
            raw = {
                s: predict_probs(
                    model,
                    own.dataset(own.rows(s).reset_index(drop=True)),
                    256,
                    desc=f"{folder} {s}",
                )
                for s in SPLITS
            }
            shift = fit_shift(decision, raw["val"], targets["val"], prior)
            entry["decision_shift"] = [round(float(v), 4) for v in shift]
            for s in SPLITS:
                p = shift_probs(raw[s], shift) if shift.any() else raw[s]
                probs[s].setdefault(name, []).append(p)
                scores = metric_fn[s](targets[s], p)
                entry[s] = {k: scores.get(k) for k in SHOWN}
            per_model[name].append(entry)
    summary = {
        name: {
            s: {
                k: _spread([m[s][k] for m in models])
                for k in SHOWN
                if all(m[s][k] is not None for m in models)
            }
            for s in SPLITS
        }
        for name, models in per_model.items()
    }
    chosen = max(candidates, key=lambda n: summary[n]["val"][CHOOSE_ON]["mean"], default=None)
    paired = seed_paired(
        targets["test"],
        rows["test"]["group_id"].to_numpy(),
        probs["test"],
        reference,
        metric_fn["test"],
        resamples,
        seed,
    )
    return {
        "reference": reference,
        "decision": decision,
        "chosen_on_validation": chosen,
        "chosen_by": f"mean validation {CHOOSE_ON} over seeds, among {candidates}",
        "resamples": resamples,
        "seed": seed,
        "models": per_model,
        "summary": summary,
        "paired_test": paired,
    }


def _cell(entry: dict[str, Any], key: str) -> str:
    ci = entry.get(key)
    if entry.get("diff") is None or ci is None:
        return "n/a"
    return f"{entry['diff']:+.3f} ({ci[0]:+.3f} to {ci[1]:+.3f})"


def table(result: dict[str, Any]) -> str:
    lines = [
        "| recipe | seeds | val BMA mean (min-max) | test BMA mean (min-max) |",
        "|---|---|---|---|",
    ]
    for name, split in result["summary"].items():
        cells = []
        for s in SPLITS:
            v = split[s].get("balanced_accuracy")
            cells.append("n/a" if v is None else f"{v['mean']:.3f} ({v['min']:.3f}-{v['max']:.3f})")
        mark = " (chosen on val)" if name == result["chosen_on_validation"] else ""
        lines.append(
            f"| {name}{mark} | {len(result['models'][name])} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "| test, mean over seeds | metric | lesion CI | lesion + seed CI |",
        "|---|---|---|---|",
    ]
    for comparison, metrics in result["paired_test"].items():
        for key in SHOWN:
            entry = metrics.get(key) or {}
            lines.append(
                f"| {comparison} | {PAIRED.get(key, key)} | "
                f"{_cell(entry, 'ci_lesion')} | {_cell(entry, 'ci_lesion_and_seed')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run whose prepared splits are scored")
    parser.add_argument("--recipe", type=recipe_argument, action="append", required=True)
    parser.add_argument("--reference", required=True, help="the recipe the others are paired with")
    parser.add_argument(
        "--bar", type=recipe_argument, action="append", default=[], help="paired too, never chosen"
    )
    parser.add_argument(
        "--decision",
        choices=RULES,
        default="argmax",
        help="the rule that calls a class, fitted per model on validation (default argmax)",
    )
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    recipes = dict(args.recipe)
    if len(recipes) != len(args.recipe):
        raise SystemExit("two --recipe entries share a name")
    bars = dict(args.bar)
    result = study(
        args.run_dir,
        recipes,
        args.reference,
        args.resamples,
        args.seed,
        bars=bars,
        decision=args.decision,
    )
    show_and_save(result, args.out)


def show_and_save(result: dict[str, Any], out: Path | None) -> None:
    """Print the study's tables; write its JSON where `out` is given."""
    print(table(result))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
