"""What each DerMAE component adds: paired differences between the variants that isolate it.

The ablation pairs every variant with (b). When the recipe misses its bar, a reader wants the
other cut: which component helps and which does not (issue 9, goal 7). Each component is the
difference between the two variants that differ only in it, e.g. MAE is (d) − (e). Where a
variant has several seeds the difference is of the means over seeds, with an interval that
redraws lesions and seeds (`dermae.evaluate.seeds.seed_paired`); with one seed a side that
interval is the lesion bootstrap's.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from dermae.evaluate.bootstrap import MetricFn
from dermae.evaluate.paired import ROC_SENSITIVITY, probs_of
from dermae.evaluate.seeds import seed_paired

# (with the component, without it, what it is). Variant keys as in ablation_text.VARIANTS.
COMPONENTS = (
    ("c_real_synth", "b_simple_fix", "synthetic images in the training set"),
    ("d_dermae", "c_real_synth", "KD from the teacher"),
    ("d_dermae", "e_no_mae", "MAE pre-training of the teacher"),
    ("d_dermae", "f_no_synth_pretrain", "synthetic images in MAE pre-training"),
    ("d_dermae", "g_mixup_no_kd", "KD beyond the student's mixup"),
)
METRICS = ("balanced_accuracy", "malignant_auroc", ROC_SENSITIVITY)
SHORT = {
    "balanced_accuracy": "balanced accuracy",
    "malignant_auroc": "malignant AUROC",
    ROC_SENSITIVITY: "sensitivity at 90% specificity",
}


def component_effects(
    frames: dict[str, list[pd.DataFrame]], metric_fn: MetricFn, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Every component whose two variants were both scored; `frames` holds each variant's
    test predictions, one frame per seed, all on the same images in the same order."""
    effects = []
    for with_it, without, what in COMPONENTS:
        if with_it not in frames or without not in frames:
            continue
        reference = frames[without][0]
        for frame in frames[with_it] + frames[without]:
            if list(frame["image_id"]) != list(reference["image_id"]):
                raise RuntimeError(f"{with_it} and {without} were scored on different images")
        paired = seed_paired(
            reference["target"].to_numpy(),
            reference["group_id"].to_numpy(),
            {name: [probs_of(f) for f in frames[name]] for name in (with_it, without)},
            without,
            metric_fn,
            resamples,
            seed,
        )[f"{with_it} - {without}"]
        effects.append(
            {
                "component": what,
                "with": with_it,
                "without": without,
                "seeds": [len(frames[with_it]), len(frames[without])],
                **{
                    m: {
                        "diff": paired[m]["diff"],
                        "ci": paired[m]["ci_lesion_and_seed"],
                        "frac_better": paired[m]["frac_better"],
                    }
                    for m in METRICS
                    if m in paired
                },
            }
        )
    return effects


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("diff") is None:
        return "n/a"
    ci = entry.get("ci")
    return f"{entry['diff']:+.3f}" + (f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")


def _variant(key: str) -> str:
    return f"({key.split('_')[0]})"


def component_lines(effects: list[dict[str, Any]]) -> list[str]:
    """One line per component: the variants, the seeds, and the three headline differences."""
    lines = []
    for e in effects:
        n_with, n_without = e["seeds"]
        seeds = "one seed each" if n_with == n_without == 1 else f"seeds {n_with} and {n_without}"
        values = "; ".join(f"{SHORT[m]} {_cell(e.get(m))}" for m in METRICS if m in e)
        lines.append(
            f"- {e['component']}, {_variant(e['with'])} − {_variant(e['without'])} "
            f"({seeds}): {values}"
        )
    return lines


def component_rows(effects: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The same as a table for the HTML report."""
    return [
        {
            "component": e["component"],
            "variants": f"{_variant(e['with'])} − {_variant(e['without'])}",
            "seeds": f"{e['seeds'][0]} / {e['seeds'][1]}",
            **{SHORT[m]: _cell(e.get(m)) for m in METRICS},
        }
        for e in effects
    ]
