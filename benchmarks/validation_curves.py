"""Was a recipe trained until validation stopped improving? Its seeds' validation curves.

Issue 9 asks for a (b) "trained until validation stops improving". Each training folder keeps
its evaluations in `train/metrics.jsonl`; per model this reads the best validation step and
the mean validation score over the last `--window` steps against the window before it
(evaluations every 100 steps are noisy one by one, a window's mean less so):

    python benchmarks/validation_curves.py \\
        --recipe b128=runs/x/ablate/b_simple_fix/model,runs/x/ablate/seeds/b_seed_plus_1/model \\
        --recipe d128=runs/x/student/model,runs/x/ablate/seeds/d_seed_plus_1/model \\
        --out benchmarks/results/x_validation_curves.json

A folder is a model folder (`.../model`, whose training is in the sibling `train/`; for a (b)
trained under both losses, the chosen loss's `<loss>/train/`, as named by the model's config)
or a training folder. Writes the JSON and a PNG of the curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from dermae.evaluate.seeds import recipe_argument

METRIC = "val_balanced_accuracy"


def metrics_log(folder: Path) -> Path:
    """The metrics.jsonl that trained `folder` (model folder, training folder or b_simple_fix)."""
    folder = Path(folder)
    candidates = [folder / "metrics.jsonl", folder / "train" / "metrics.jsonl"]
    if folder.name == "model":
        candidates.append(folder.parent / "train" / "metrics.jsonl")
        config = folder / "config.json"
        if config.exists():  # (b) under `loss: auto` keeps each loss's training apart
            loss = json.loads(config.read_text()).get("loss")
            candidates.append(folder.parent / str(loss) / "train" / "metrics.jsonl")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{folder}: no metrics.jsonl in it, its train/ or beside its model; "
        "pass a model folder or its training folder"
    )


def curve(log: Path, metric: str = METRIC) -> list[tuple[int, float]]:
    """(step, score) of every evaluation in a training log, in step order."""
    points = []
    for line_no, line in enumerate(log.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{log}:{line_no} is not JSON ({err})") from None
        if record.get(metric) is not None:
            points.append((int(record["step"]), float(record[metric])))
    if not points:
        raise ValueError(f"{log} holds no '{metric}' evaluations")
    return sorted(points)


def summarise(points: list[tuple[int, float]], window: int) -> dict[str, Any]:
    """Best step and the mean score in the last `window` steps against the window before."""
    steps = np.array([s for s, _ in points])
    scores = np.array([v for _, v in points])
    last = int(steps.max())
    late = scores[steps > last - window]
    early = scores[(steps > last - 2 * window) & (steps <= last - window)]
    best = int(np.argmax(scores))
    summary: dict[str, Any] = {
        "last_step": last,
        "best_step": int(steps[best]),
        "best": float(scores[best]),
        "late_mean": float(late.mean()),
        "early_mean": float(early.mean()) if len(early) else None,
    }
    summary["still_rising"] = bool(len(early)) and summary["late_mean"] > summary["early_mean"]
    return summary


def plot(curves: dict[str, list[list[tuple[int, float]]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, seeds) in enumerate(curves.items()):
        for k, points in enumerate(seeds):
            steps, scores = zip(*points, strict=True)
            ax.plot(steps, scores, color=f"C{i}", alpha=0.8, label=name if k == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation balanced accuracy")
    ax.set_title("Validation curves, one line per seed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=recipe_argument, action="append", required=True)
    parser.add_argument("--window", type=int, default=500, help="steps per window")
    parser.add_argument("--out", type=Path, required=True, help="JSON; the PNG goes beside it")
    args = parser.parse_args(argv)
    curves = {name: [curve(metrics_log(f)) for f in folders] for name, folders in args.recipe}
    result: dict[str, Any] = {"metric": METRIC, "window": args.window, "recipes": {}}
    for (name, folders), seeds in zip(args.recipe, curves.values(), strict=True):
        models = [
            {"folder": str(f), **summarise(points, args.window)}
            for f, points in zip(folders, seeds, strict=True)
        ]
        result["recipes"][name] = {
            "models": models,
            "still_rising": sum(m["still_rising"] for m in models),
        }
        for m in models:
            before = "n/a" if m["early_mean"] is None else f"{m['early_mean']:.3f}"
            print(
                f"{name} {m['folder']}: best step {m['best_step']} ({m['best']:.3f}); mean of the "
                f"last {args.window} steps {m['late_mean']:.3f} against {before}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    result["plot"] = str(plot(curves, args.out.with_suffix(".png")))
    return result


if __name__ == "__main__":
    main()
