"""Where a DerMAE student's gain comes from: its teacher's margin over (b), and the schedule.

Every multi-seed study of issue 9 (BENCHMARKS.md sections 25-32) pairs a KD student's mean over
seeds with (b)'s, and most pair the teacher too. This script reads those committed
`seed_study.py` outputs, nothing else, and draws one point per student recipe: x = the
teacher's test balanced accuracy minus (b)'s mean, y = the student's mean minus (b)'s, with
the lesion + seed 95 % interval. The diagonal is "the student matches its teacher"; the
dashed line is issue 9's +0.05 goal.

    python benchmarks/kd_gain_plot.py --out benchmarks/results/kd_gain_vs_teacher.json \\
        --png benchmarks/results/kd_gain_vs_teacher.png
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
METRIC = "balanced_accuracy"


@dataclass(frozen=True)
class Study:
    section: str
    label: str
    student_file: str
    student: str  # recipe name in student_file
    teacher_file: str  # a study that scored the same teacher against the same (b) models
    teacher: str
    steps: int


STUDIES = (
    Study("25", "resnet10t, ViT+3(b) teacher", "cpu_full_seed_study_5seeds.json", "d_mixup_0",
          "cpu_full_seed_study_5seeds.json", "teacher_ensemble", 900),
    Study("25", "resnet10t, mixup 0.4", "cpu_full_seed_study_5seeds.json", "d_mixup_0.4",
          "cpu_full_seed_study_5seeds.json", "teacher_ensemble", 900),
    Study("26", "resnet10t, + two 128-px CNNs", "cpu_full_cnn_teacher_h128_seed_study.json",
          "d_vit_3b_2h128", "cpu_full_cnn_teacher_h128_seed_study.json",
          "teacher_vit_3b_2h128", 900),
    Study("27", "resnet10t, 3(b), function matching", "cpu_full_fm_study_3seeds.json", "d_fm",
          "cpu_full_fm_study_3seeds.json", "teacher_ensemble", 900),
    Study("27", "resnet10t, 3(b), FM pure KL", "cpu_full_fm_study_3seeds.json", "d_fm_kl",
          "cpu_full_fm_study_3seeds.json", "teacher_ensemble", 900),
    Study("28", "mobilenetv3_small, 3(b)", "cpu_full_student_mobilenetv3_small_100_study_3seeds.json",
          "d", "cpu_full_student_mobilenetv3_small_100_study_3seeds.json", "teacher_ensemble", 900),
    Study("29", "mobilenetv3_small, 3(b), patient",
          "cpu_full_student_mobilenetv3_small_100_steps_2700_study_3seeds.json", "d",
          "cpu_full_student_mobilenetv3_small_100_steps_2700_study_3seeds.json",
          "teacher_ensemble", 2700),
    # Section 32's (b) models and teacher are section 27's, on the same test split.
    Study("32", "resnet10t, 3(b), + perceptual synthetic", "synthetic_kd_study_vae-perc0.1_r0.25.json",
          "d", "cpu_full_fm_study_3seeds.json", "teacher_ensemble", 900),
)  # fmt: skip


def paired(result: dict[str, Any], recipe: str) -> dict[str, Any]:
    """`recipe − reference` on test for METRIC, from a seed_study.py output."""
    key = f"{recipe} - {result['reference']}"
    if key not in result["paired_test"]:
        raise KeyError(f"no '{key}' in the study; it holds {sorted(result['paired_test'])}")
    return result["paired_test"][key][METRIC]


def point(study: Study, results: Path = RESULTS) -> dict[str, Any]:
    student = paired(json.loads((results / study.student_file).read_text()), study.student)
    teacher = paired(json.loads((results / study.teacher_file).read_text()), study.teacher)
    return {
        **asdict(study),
        "teacher_minus_b": teacher["diff"],
        "student_minus_b": student["diff"],
        "student_ci": student["ci_lesion_and_seed"],
    }


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, key) = plt.subplots(1, 2, figsize=(11, 5.5), width_ratios=[3, 2])
    top = max(0.08, max(p["teacher_minus_b"] for p in points) + 0.01)
    ax.plot([-0.02, top], [-0.02, top], color="grey", lw=0.8, label="student = teacher")
    ax.axhline(0.05, color="tab:red", ls="--", lw=0.8, label="issue 9 goal (+0.05)")
    ax.axhline(0.0, color="black", lw=0.5)
    lines = []
    for number, p in enumerate(points, start=1):
        low, high = p["student_ci"]
        y = p["student_minus_b"]
        colour = "tab:green" if p["steps"] > 900 else "tab:blue"
        ax.errorbar(p["teacher_minus_b"], y, yerr=[[y - low], [high - y]], fmt="o",
                    color=colour, capsize=3, alpha=0.8)  # fmt: skip
        # Points share a teacher (x), so numbers alternate sides to stay readable.
        ax.annotate(str(number), (p["teacher_minus_b"], y), fontsize=8,
                    xytext=(5 if number % 2 else -11, -3), textcoords="offset points")  # fmt: skip
        lines.append(f"{number}. §{p['section']} {p['label']}: {y:+.3f}")
    ax.scatter([], [], color="tab:blue", label="900 student steps")
    ax.scatter([], [], color="tab:green", label="2,700 student steps")
    key.axis("off")
    key.text(0, 1, "\n".join(lines), va="top", fontsize=8, family="monospace")
    ax.set_xlabel("teacher − (b), test balanced accuracy (mean of (b)'s seeds)")
    ax.set_ylabel("student − (b), mean over seeds (lesion + seed 95 % CI)")
    ax.set_title("KD gain against the teacher's margin, cpu-full budget (AMX)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    points = [point(s) for s in STUDIES]
    for p in points:
        print(f"§{p['section']:>2} {p['label']:<42} teacher {p['teacher_minus_b']:+.3f}  "
              f"student {p['student_minus_b']:+.3f} ({p['student_ci'][0]:+.3f} to "
              f"{p['student_ci'][1]:+.3f})")  # fmt: skip
    args.out.write_text(json.dumps({"metric": METRIC, "points": points}, indent=2))
    if args.png:
        plot(points, args.png)


if __name__ == "__main__":
    main()
