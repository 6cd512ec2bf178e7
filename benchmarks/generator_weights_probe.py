"""Which UNet weights make images of their class? A finished run's EMA UNet (what sampling
uses) against the raw weights of its last training checkpoint, at one or more guidance
scales, judged like `synth_quality`: the fraction of images the run's real-data baseline
assigns to the class they were made for.

    python benchmarks/generator_weights_probe.py runs/cpu-full --per-class 100 \\
        --guidance 1 3 --out benchmarks/results/cpu_full_generator_weights.json

The same seeds serve every variant, so differences come from the weights and the scale.

`--second-judge DIR` adds a classifier that did not choose anything (e.g. another seed of the
baseline, `baseline_seeds/seed_plus_1/model`): its fidelity on all images, and on the images
the first judge accepts (what `sample.filter: classifier` keeps), with the acceptance rate. A
filter judged by its own classifier scores 100 % by construction; the second judge does not.
`--weights ema` skips the raw checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from safetensors.torch import load_file

from dermae.classify.model import load_classifier
from dermae.synth.ldm import load_noise_scheduler, load_unet
from dermae.synth.sample import generate, image_seed, make_sampler
from dermae.synth.vae import load_vae

CHECKPOINT = Path("synth") / "ldm_train" / "checkpoint" / "model.safetensors"


def predicted(judge: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """The class name `judge` gives each image."""
    size = int(judge.config["image_size"])
    with torch.no_grad():
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=size, mode="bilinear")
        pred = judge(images).argmax(dim=1).numpy()
    return np.array([judge.config["class_names"][p] for p in pred])


def fidelity(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    sampler: SchedulerMixin,
    judges: list[torch.nn.Module],
    classes: list[str],
    wanted: list[str],
    per_class: int,
    guidance: float,
) -> dict[str, list[np.ndarray]]:
    """Per wanted class, per judge: the class it gives each of `per_class` images."""
    result = {}
    for name in wanted:
        gens = [torch.Generator().manual_seed(image_seed(0, name, i)) for i in range(per_class)]
        labels = torch.full((per_class,), classes.index(name))
        images = generate(unet, vae, sampler, labels, guidance, 25, gens, "bf16")
        # The stored images are uint8: judge the same quantised pixels.
        images = (images * 255).round() / 255
        result[name] = [predicted(judge, images) for judge in judges]
    return result


def second_opinion(hits: dict[str, list[np.ndarray]]) -> dict[str, dict[str, float | None]]:
    """The second judge's fidelity on all images and on those the first judge accepts."""
    out: dict[str, dict[str, float | None]] = {"fidelity": {}, "accepted": {}, "of_accepted": {}}
    for name, (first, second) in hits.items():
        out["fidelity"][name] = float(second.mean())
        out["accepted"][name] = float(first.mean())
        out["of_accepted"][name] = float(second[first].mean()) if first.any() else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    parser.add_argument("--classes", nargs="+", help="default: every class but nv")
    parser.add_argument("--second-judge", type=Path, help="another classifier's model folder")
    parser.add_argument("--weights", choices=["both", "ema"], default="both")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ema_unet, meta = load_unet(args.run_dir)
    raw = args.run_dir / CHECKPOINT
    if not raw.is_file():
        parser.error(f"{raw} is missing: the probe needs the run's last UNet checkpoint")
    raw_unet, _ = load_unet(args.run_dir)
    raw_unet.load_state_dict(load_file(str(raw)))
    vae = load_vae(args.run_dir)
    judges = [load_classifier(args.run_dir / "baseline" / "model")[0]]
    if args.second_judge:
        judges.append(load_classifier(args.second_judge)[0])
    for judge in judges:
        judge.eval()
    sampler = make_sampler("ddim", load_noise_scheduler(args.run_dir))
    classes = list(meta["class_names"])
    wanted = args.classes or [c for c in classes if c != "nv"]
    record: dict = {"run_dir": str(args.run_dir), "per_class": args.per_class, "results": {}}
    if args.second_judge:
        record["second_judge"] = str(args.second_judge)
    unets = (("ema", ema_unet), ("raw", raw_unet))[: 1 if args.weights == "ema" else 2]
    for weights, unet in unets:
        for g in args.guidance:
            t0 = time.perf_counter()
            names = fidelity(unet, vae, sampler, judges, classes, wanted, args.per_class, g)
            hits = {c: [judged == c for judged in n] for c, n in names.items()}
            scores = {c: float(h[0].mean()) for c, h in hits.items()}
            entry = record["results"][f"{weights} guidance {g:g}"] = {
                "class_fidelity": scores,
                # what the first judge calls each class's images: where the misses go
                "judged_as": {
                    c: dict(Counter(n[0].tolist()).most_common()) for c, n in names.items()
                },
                "mean": float(np.mean(list(scores.values()))),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(weights, g, {c: round(v, 3) for c, v in scores.items()})
            if args.second_judge:
                entry["second_judge"] = second_opinion(hits)
                print("  second judge on accepted:", entry["second_judge"]["of_accepted"])
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
