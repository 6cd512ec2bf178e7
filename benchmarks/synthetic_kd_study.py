"""(c) and (d) over several seeds on one run's synthetic images: do they add up?

The one-seed ablation trains (c) once, and its seeds only cover (b) and (d). Here, on a run
that already holds prepared data with synthetic rows, (b) and its seed members
(`baseline_seeds`) and a teacher, both recipes are trained at seeds seed + k, k < --seeds:

- (c): (b)'s recipe on real + synthetic rows (`distill.synthetic_ratio`), as the ablation;
- (d): the same plus KD from `distill.teachers` (`distill.alpha`, `distill.temperature`).
  With `distill.synthetic_hard_labels: true`, (d) is exactly (c) + the KD term.

Only the seed changes within a recipe. Models land in `<run>/study/{c,d}_seed_<k>/model`
(stage records, so an interrupted study resumes), then `seed_study.py` pairs each recipe's
mean with (b)'s on test, choosing on validation:

    python benchmarks/synthetic_kd_study.py runs/vae-perc0.1 -c configs/cpu-full.yaml \\
        --set baseline.loss=balanced_sampler --set sample.guidance=5 \\
        --set 'distill.teachers=[baseline]' --set 'ablate.variants=[b,c,d]' \\
        --set distill.synthetic_ratio=0.25 --set distill.synthetic_hard_labels=true \\
        --seeds 3 --out benchmarks/results/synthetic_kd_study_vae-perc0.1_r0.25.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dermae.classify.baseline import baseline_seed_dirs, chosen_loss, train_baseline
from dermae.config import Config, load_config
from dermae.distill.train import distill
from dermae.evaluate.ablation import seeded_distill, student_recipe

sys.path.insert(0, str(Path(__file__).parent))
from seed_study import show_and_save, study  # noqa: E402


def train_recipes(cfg: Config, run_dir: Path, seeds: int, recipes: list[str]) -> dict:
    """Train (c) and/or (d) at each seed, interleaved so that a cut-short study is paired."""
    loss = chosen_loss(run_dir, "baseline")
    trained: dict[str, list[Path]] = {name: [] for name in recipes}
    for k in range(seeds):
        seeded = seeded_distill(cfg, k)
        if "c" in recipes:
            trained["c"].append(
                train_baseline(
                    seeded,
                    run_dir,
                    f"study/c_seed_{k}",
                    student_recipe(seeded, loss),
                    synthetic_ratio=seeded.distill.synthetic_ratio,
                )
            )
        if "d" in recipes:
            trained["d"].append(distill(seeded, run_dir, stage=f"study/d_seed_{k}"))
    return trained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recipes", default="c,d", help="which of c,d to train")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [*args.set, f"run_dir={args.run_dir}"])
    if not cfg.data.include_synthetic:
        raise SystemExit("data.include_synthetic is false: (c) and (d) would see no synthetic rows")
    trained = train_recipes(cfg, args.run_dir, args.seeds, args.recipes.split(","))
    members = baseline_seed_dirs(args.run_dir, cfg.distill.baseline_seeds)
    b = [args.run_dir / "baseline" / "model", *members][: args.seeds]
    result = study(args.run_dir, {"b": b, **trained}, "b", args.resamples, seed=0)
    result["overrides"] = args.set
    show_and_save(result, args.out)


if __name__ == "__main__":
    main()
