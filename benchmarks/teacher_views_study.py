"""Does KD keep its gain when the teacher's targets are cached per augmented view?

On a run whose ablation already holds seeds of (b) and of the live-teacher (d)
(`ablate/ablation.json`, `seeds.models`), train (d) again at the same seeds with only
`distill.teacher_views` = K changed (each train row augmented K times once and labelled by the
teacher once; `dermae.distill.views`). Models land in `<run>/views<K>/d_seed_<k>/model` (stage
records, so a cut-short study resumes), then `seed_study.py` pairs every recipe's mean with
(b)'s on test. The JSON also keeps each (d)'s training and teacher seconds, live and cached.

Section 29's patient phone student (BENCHMARKS section 33):

    python benchmarks/teacher_views_study.py runs/cpu-full-student-mobilenetv3_small_100-steps-2700 \\
        -c configs/cpu-full.yaml --set baseline.loss=balanced_sampler \\
        --set data.include_synthetic=false --set 'distill.teachers=[baseline]' \\
        --set distill.model=mobilenetv3_small_100 --set 'ablate.variants=[b,d]' \\
        --set distill.train.max_steps=2700 --views 8 --seeds 3 \\
        --out benchmarks/results/teacher_views_8_mobilenet_2700.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dermae.config import load_config
from dermae.distill.train import STATS_FILE, distill
from dermae.evaluate.ablation import seeded_distill

sys.path.insert(0, str(Path(__file__).parent))
from seed_study import show_and_save, study  # noqa: E402


def ablation_seeds(run_dir: Path) -> dict[str, list[Path]]:
    """(b)'s and live (d)'s seed folders as the run's ablation lists them."""
    models = json.loads((run_dir / "ablate" / "ablation.json").read_text())["seeds"]["models"]
    return {
        name: [Path(p) for p in models[key]]
        for name, key in (("b", "b_simple_fix"), ("d_live", "d_dermae"))
    }


def cost(model_dir: Path) -> dict[str, float]:
    """Training and teacher-cache seconds from the stage's model_stats.json."""
    stats = json.loads((model_dir.parent / STATS_FILE).read_text())
    return {k: stats[k] for k in ("train_seconds", "teacher_cache_seconds", "steps")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cfg = load_config(
        args.config,
        [*args.set, f"distill.teacher_views={args.views}", f"run_dir={args.run_dir}"],
    )
    recipes = ablation_seeds(args.run_dir)
    recipes = {name: folders[: args.seeds] for name, folders in recipes.items()}
    cached_name = f"d_views{args.views}"
    recipes[cached_name] = [
        distill(seeded_distill(cfg, k), args.run_dir, stage=f"views{args.views}/d_seed_{k}")
        for k in range(args.seeds)
    ]
    teacher = args.run_dir / "teacher_ensemble" / "model"
    bars = {"teacher_ensemble": [teacher]} if teacher.exists() else None
    result: dict[str, Any] = study(args.run_dir, recipes, "b", args.resamples, seed=0, bars=bars)
    result["overrides"] = [*args.set, f"distill.teacher_views={args.views}"]
    result["cost"] = {
        name: [cost(folder) for folder in recipes[name]] for name in ("d_live", cached_name)
    }
    show_and_save(result, args.out)


if __name__ == "__main__":
    main()
