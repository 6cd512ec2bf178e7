"""The ablation's text: the verdict lines and the Markdown report of `ablation.json`.

Pure functions of the summary dict, so the run report (summary.py) and the benchmarks scripts
render an ablation without importing its training code. The variant and teacher labels live
here because both the text and the training side (ablation.py) name models by them.
"""

from __future__ import annotations

from typing import Any

from dermae.evaluate.components import component_lines
from dermae.evaluate.paired import ROC_SENSITIVITY
from dermae.layout import ENSEMBLE, TEACHER

HEADLINE = {
    "balanced_accuracy": "balanced accuracy",
    "malignant_sensitivity[spec@0.90]": "malignant sensitivity @ 90% spec.",
    "malignant_auroc": "malignant AUROC",
    "macro_auroc": "macro AUROC",
    "ece": "ECE (lower is better)",
}
PAIRED = {
    "balanced_accuracy": "balanced accuracy",
    "malignant_auroc": "malignant AUROC",
    ROC_SENSITIVITY: "malignant sensitivity at 90% specificity (test ROC)",
    "macro_auroc": "macro AUROC",
    "ece": "ECE (lower is better)",
}
VARIANTS = {
    "a": ("a_real_ce", "(a) real, plain CE"),
    "b": ("b_simple_fix", "(b) real, simple fix"),
    "c": ("c_real_synth", "(c) (b) + synthetic images"),
    "d": ("d_dermae", "(d) DerMAE student"),
    "e": ("e_no_mae", "(e) KD, teacher without MAE"),
    "f": ("f_no_synth_pretrain", "(f) KD, teacher pre-trained without synthetics"),
    "g": ("g_mixup_no_kd", "(g) (b) + the student's mixup, no teacher"),
}
TEACHERS = {
    TEACHER: (TEACHER, "MAE ViT teacher"),
    ENSEMBLE: (ENSEMBLE, "DerMAE teacher (ensemble)"),
}
LABELS = {key: label for key, label in VARIANTS.values()} | {
    name: label for name, (_, label) in TEACHERS.items()
}
COMPONENTS_INTRO = (
    "What each component adds: the two variants that differ only in it, paired on test "
    "(means over seeds where there are several; 95% CI over lesions and seeds):"
)
CHECKPOINT_RULES = {
    "best": "its best validation balanced accuracy among the evaluations",
    "last": "its last step's weights",
}


def verdict(comparisons: dict[str, dict[str, Any]], metric: str = "balanced_accuracy") -> str:
    """One line per model: better, worse or not distinguishable from (b), by the paired CI."""
    lines = []
    for name, diffs in comparisons.items():
        entry = diffs.get(metric) or {}
        lo, hi = entry.get("ci") or (None, None)
        if entry.get("diff") is None:
            lines.append(f"- {name}: {metric} difference undefined")
            continue
        if lo is None:
            lines.append(
                f"- {name}: {entry['diff']:+.3f}, CI undefined (too few resamples keep every "
                "class; the test split is too small to tell)"
            )
            continue
        if lo > 0:
            word = "better than (b)"
        elif hi < 0:
            word = "worse than (b)"
        else:
            word = "not distinguishable from (b)"
        lines.append(f"- {name}: {entry['diff']:+.3f} ({lo:+.3f} to {hi:+.3f}), {word}")
    return "\n".join(lines)


def seed_verdict(seeds: dict[str, Any], metric: str = "balanced_accuracy") -> str:
    """One line per recipe: the mean over seeds minus (b)'s, judged by the interval that also
    redraws seeds (the lesion-only interval is given beside it)."""
    lines = []
    counts = {name: len(folders) for name, folders in (seeds.get("models") or {}).items()}
    for name, diffs in seeds["paired"].items():
        entry = diffs.get(metric) or {}
        both, lesion = entry.get("ci_lesion_and_seed"), entry.get("ci_lesion")
        one_model = counts.get(name.split(" - ")[0]) == 1
        n = seeds["n"]
        how = f"one model against (b)'s mean of {n}" if one_model else f"mean of {n} seeds each"
        if entry.get("diff") is None or both is None or lesion is None:
            lines.append(f"- {name}, {how}: {metric} interval undefined")
            continue
        word = (
            "better than (b)"
            if both[0] > 0
            else "worse than (b)"
            if both[1] < 0
            else "not distinguishable from (b)"
        )
        lines.append(
            f"- {name}, {how}: {entry['diff']:+.3f} "
            f"(lesions and seeds resampled {both[0]:+.3f} to {both[1]:+.3f}; lesions only "
            f"{lesion[0]:+.3f} to {lesion[1]:+.3f}), {word}"
        )
    return "\n".join(lines)


def ablation_markdown(summary: dict[str, Any]) -> str:
    """Verdict first (over seeds when there are several), then the table, then every paired
    difference against (b)."""
    lines = []
    if summary.get("seed_verdict"):
        lines += [
            "Verdict over seeds: mean balanced accuracy minus (b)'s mean, paired (95% CI):",
            "",
            summary["seed_verdict"],
            "",
            seeds_line(summary["seeds"]),
            "",
        ]
    lines += [
        "Verdict: each model minus (b), balanced accuracy, paired lesion bootstrap (95% CI):",
        "",
        summary["verdict"],
        "",
    ]
    if summary.get("components"):
        lines += [COMPONENTS_INTRO, "", *component_lines(summary["components"]), ""]
    differences = summary["notes"].get("like_for_like") or []
    lines += [f"Not like for like: {d}" for d in differences]
    sizes = summary["notes"].get("sizes")
    if sizes:
        lines.append(size_line(sizes))
    if summary.get("checkpoint_rule"):
        lines.append(checkpoint_line(summary["checkpoint_rule"]))
    for set_name, paired in (summary.get("external_paired_bootstrap") or {}).items():
        lines += [
            "",
            f"External set {set_name}: each model minus (b), malignant AUROC (paired, 95% CI):",
            "",
            verdict(paired, "malignant_auroc"),
        ]
    table = summary["table"]
    columns = list(table[0]) if table else []
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
    for name, diffs in summary["paired_bootstrap"].items():
        lines += ["", f"Paired bootstrap, {name} (difference and 95% CI):", ""]
        for key, label in PAIRED.items():
            if key not in diffs or diffs[key]["diff"] is None:
                continue
            lo, hi = diffs[key]["ci"]
            ci = f"{lo:+.3f} to {hi:+.3f}" if lo is not None else "n/a"
            higher = diffs[key]["frac_b_gt_a"]
            better = 1 - higher if key == "ece" else higher  # ECE: lower is better
            lines.append(
                f"- {label}: {diffs[key]['diff']:+.3f} ({ci}); "
                f"share of resamples where it beats (b) = {better:.2f}"
            )
    return "\n".join(lines) + "\n"


def seeds_line(seeds: dict[str, Any]) -> str:
    """Each recipe's test balanced accuracy, seed by seed: the spread the verdict averages."""
    parts = []
    for name, values in seeds["test_balanced_accuracy"].items():
        shown = ", ".join("n/a" if v is None else f"{v:.3f}" for v in values)
        parts.append(f"{LABELS.get(name, name)}: {shown}")
    return "Test balanced accuracy per seed (seed, seed + 1, ...): " + "; ".join(parts) + "."


def checkpoint_line(rule: str) -> str:
    kept = CHECKPOINT_RULES.get(rule, rule)
    return f"Checkpoint: every student variant keeps {kept} (distill.train.select={rule})."


def size_line(sizes: dict[str, Any]) -> str:
    t, s = sizes["teacher"], sizes["student"]
    members = t.get("members") or []
    of = f" of {len(members)} ({', '.join(members)})" if len(members) > 1 else ""
    line = (
        f"Teacher {t['arch']}{of}: {t['parameters'] / 1e6:.1f} M parameters, "
        f"{t['flops_per_image'] / 1e9:.2f} GFLOPs per image; student {s['arch']}: "
        f"{s['parameters'] / 1e6:.1f} M, {s['flops_per_image'] / 1e9:.2f} GFLOPs."
    )
    if t.get("image_size", 0) > s.get("image_size", 0):
        seen = t.get("view") or "the student's images"
        line += (
            f" The teacher works at {t['image_size']} px ({seen}), "
            f"the student at {s['image_size']} px."
        )
    return line
