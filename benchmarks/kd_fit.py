"""How closely do students follow their teacher, split by split? (No training.)

A student that matches the teacher as badly on its own training images as on test is held
back by what it can represent (capacity, resolution, steps); one that matches it far better on
train than on test is held back by what it has seen (more transfer images, more views). Each
model and the teacher score the un-augmented train, validation and test images once:

    python benchmarks/kd_fit.py runs/cpu-full-phone --teacher teacher_ensemble/model \\
        --model d=student/model --model b=ablate/b_simple_fix/model \\
        --out benchmarks/results/cpu_full_phone_kd_fit.json

Per split and model: KL(teacher || model) averaged over images, top-1 agreement with the
teacher, balanced accuracy and per-class sensitivity, beside the teacher's own. Every model
sees the images cached at its own size (a student at `distill.image_size` at that size; an
ensemble at its largest member's, resizing for the others as in its own forward).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from dermae.classify.common import dataset_targets, predict_probs, target_view
from dermae.classify.model import load_classifier
from dermae.data.prepared import PreparedData, load_prepared
from dermae.metrics import classification_metrics

SPLITS = ("train", "val", "test")
EPS = 1e-12


def follow_scores(teacher: np.ndarray, student: np.ndarray) -> dict[str, float]:
    """KL(teacher || student) per image, averaged, and top-1 agreement; probabilities [N, C]."""
    kl = (teacher * (np.log(teacher + EPS) - np.log(student + EPS))).sum(1)
    agreement = teacher.argmax(1) == student.argmax(1)
    return {"kl_from_teacher": float(kl.mean()), "top1_agreement": float(agreement.mean())}


def label_scores(
    probs: np.ndarray, targets: np.ndarray, class_names: list[str], malignant_index: list[int]
) -> dict[str, Any]:
    """Balanced accuracy and per-class sensitivity, as the evaluate stage computes them."""
    report = classification_metrics(targets, probs, class_names, malignant_index)
    return {
        "balanced_accuracy": report["balanced_accuracy"],
        "sensitivity": {c: report["per_class"][c]["sensitivity"] for c in class_names},
    }


def at_model_size(prepared: PreparedData, model: Any) -> PreparedData:
    """The same rows cached at the model's own resolution."""
    size = int(model.config["image_size"])
    return prepared if size == prepared.image_size else prepared.at_size(size)


def split_images(prepared: PreparedData, model: Any, split: str) -> Any:
    """The split's un-augmented images at the model's own resolution."""
    sized = at_model_size(prepared, model)
    return sized.dataset(sized.rows(split))


def kd_fit(run_dir: Path, teacher_dir: str, models: dict[str, str]) -> dict[str, Any]:
    prepared = load_prepared(run_dir, with_synthetic=False)
    view = target_view(prepared, "diagnosis")
    classes = (view.class_names, view.malignant_index)
    teacher = load_classifier(run_dir / teacher_dir)[0]
    students = {name: load_classifier(run_dir / folder)[0] for name, folder in models.items()}
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "teacher": teacher_dir,
        "models": models,
        "splits": {},
    }
    for split in SPLITS:
        targets = dataset_targets(prepared.dataset(prepared.rows(split)), view.key)
        teacher_probs = predict_probs(
            teacher, split_images(prepared, teacher, split), desc=f"teacher {split}"
        )
        scores = {
            "images": len(targets),
            "teacher": label_scores(teacher_probs, targets, *classes),
        }
        for name, model in students.items():
            probs = predict_probs(
                model, split_images(prepared, model, split), desc=f"{name} {split}"
            )
            scores[name] = {
                **follow_scores(teacher_probs, probs),
                **label_scores(probs, targets, *classes),
            }
        result["splits"][split] = scores
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        "| split | model | KL(teacher ‖ model) | top-1 agreement | balanced accuracy |",
        "|---|---|---|---|---|",
    ]
    for split, scores in result["splits"].items():
        lines.append(
            f"| {split} | teacher | — | — | {scores['teacher']['balanced_accuracy']:.3f} |"
        )
        for name in result["models"]:
            s = scores[name]
            lines.append(
                f"| {split} | {name} | {s['kl_from_teacher']:.3f} | {s['top1_agreement']:.3f} "
                f"| {s['balanced_accuracy']:.3f} |"
            )
    return "\n".join(lines)


def _model(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=folder, got '{text}'")
    return name, folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--teacher", default="teacher_ensemble/model", help="folder in the run")
    parser.add_argument("--model", type=_model, action="append", required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = kd_fit(args.run_dir, args.teacher, dict(args.model))
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
