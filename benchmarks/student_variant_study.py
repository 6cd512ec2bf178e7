"""One change to a run's KD student, trained at its seeds and paired with the run's (b) and (d).

On a run whose ablation already holds seeds of (b) and of (d) (`ablate/ablation.json`,
`seeds.models`), train (d) again at the same seeds with the config overrides given (`--set`,
on top of those that reproduce the run's (d)), into `<run>/<name>/d_seed_<k>/model` (stage
records, so a cut-short study resumes). Then `seed_study.py` pairs each recipe's mean with
(b)'s on test: (b), the run's (d) as `d_live`, the new one as `d_<name>`. The JSON also keeps
each (d)'s training and teacher-cache seconds.

Section 33, teacher targets cached per view, on section 29's patient phone student (the
`--set`s before `--name` reproduce section 29's (d); the last one is the change):

    python benchmarks/student_variant_study.py runs/cpu-full-student-mobilenetv3_small_100-steps-2700 \\
        -c configs/cpu-full.yaml --set baseline.loss=balanced_sampler \\
        --set data.include_synthetic=false --set 'distill.teachers=[baseline]' \\
        --set distill.model=mobilenetv3_small_100 --set 'ablate.variants=[b,d]' \\
        --set distill.train.max_steps=2700 --name views8 --set distill.teacher_views=8 \\
        --seeds 3 --out benchmarks/results/teacher_views_8_mobilenet_2700.json

A teacher from other runs' models: `--set 'distill.teachers=[baseline,/abs/path/model]'`
(a classifier folder; `baseline` brings the run's (b) seeds, `distill.baseline_seeds`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dermae.config import load_config
from dermae.distill.train import STATS_FILE, distill
from dermae.engine.threads import apply_threads
from dermae.evaluate.ablation import seeded_distill

sys.path.insert(0, str(Path(__file__).parent))
from seed_study import show_and_save, study  # noqa: E402


def ablation_seeds(run_dir: Path) -> dict[str, list[Path]]:
    """(b)'s and the run's own (d)'s seed folders as its ablation lists them."""
    models = json.loads((run_dir / "ablate" / "ablation.json").read_text())["seeds"]["models"]
    pairs = (("b", "b_simple_fix"), ("d_live", "d_dermae"))
    return {name: [Path(p) for p in models[key]] for name, key in pairs}


def cost(model_dir: Path) -> dict[str, float]:
    """Training and teacher-cache seconds from the stage's model_stats.json."""
    stats = json.loads((model_dir.parent / STATS_FILE).read_text())
    return {k: stats[k] for k in ("train_seconds", "teacher_cache_seconds", "steps")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", required=True, help="the variant: folder and recipe name")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    apply_threads(int(os.environ.get("DERMAE_THREADS", "0")))  # as `dermae` does
    cfg = load_config(args.config, [*args.set, f"run_dir={args.run_dir}"])
    recipes = {
        name: folders[: args.seeds] for name, folders in ablation_seeds(args.run_dir).items()
    }
    variant = f"d_{args.name}"
    recipes[variant] = [
        distill(seeded_distill(cfg, k), args.run_dir, stage=f"{args.name}/d_seed_{k}")
        for k in range(args.seeds)
    ]
    # The run's teacher ensemble and the variant's (saved beside its first seed), when made.
    teachers = {
        "teacher_ensemble": args.run_dir / "teacher_ensemble" / "model",
        f"teacher_{args.name}": args.run_dir / args.name / "d_seed_0_teacher" / "model",
    }
    bars = {name: [folder] for name, folder in teachers.items() if folder.exists()} or None
    result: dict[str, Any] = study(args.run_dir, recipes, "b", args.resamples, seed=0, bars=bars)
    result["overrides"] = args.set
    result["cost"] = {
        name: [cost(folder) for folder in recipes[name]] for name in ("d_live", variant)
    }
    show_and_save(result, args.out)


if __name__ == "__main__":
    main()
