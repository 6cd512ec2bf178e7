"""Which UNet weights make images of their class? A finished run's EMA UNet (what sampling
uses) against the raw weights of its last training checkpoint, at one or more guidance
scales, judged like `synth_quality`: the fraction of images the run's real-data baseline
assigns to the class they were made for.

    python benchmarks/generator_weights_probe.py runs/cpu-full --per-class 100 \\
        --guidance 1 3 --out benchmarks/results/cpu_full_generator_weights.json

The same seeds serve every variant, so differences come from the weights and the scale.
"""

from __future__ import annotations

import argparse
import json
import time
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


def fidelity(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    sampler: SchedulerMixin,
    judge: torch.nn.Module,
    classes: list[str],
    wanted: list[str],
    per_class: int,
    guidance: float,
) -> dict[str, float]:
    """Per wanted class: the fraction of `per_class` images the baseline calls that class."""
    judge_names = list(judge.config["class_names"])
    size = int(judge.config["image_size"])
    result = {}
    for name in wanted:
        gens = [torch.Generator().manual_seed(image_seed(0, name, i)) for i in range(per_class)]
        labels = torch.full((per_class,), classes.index(name))
        images = generate(unet, vae, sampler, labels, guidance, 25, gens, "bf16")
        # The stored images are uint8: judge the same quantised pixels.
        images = (images * 255).round() / 255
        with torch.no_grad():
            if images.shape[-1] != size:
                images = torch.nn.functional.interpolate(images, size=size, mode="bilinear")
            pred = judge(images).argmax(dim=1).numpy()
        result[name] = float(np.mean([judge_names[p] == name for p in pred]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    parser.add_argument("--classes", nargs="+", help="default: every class but nv")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ema_unet, meta = load_unet(args.run_dir)
    raw = args.run_dir / CHECKPOINT
    if not raw.is_file():
        parser.error(f"{raw} is missing: the probe needs the run's last UNet checkpoint")
    raw_unet, _ = load_unet(args.run_dir)
    raw_unet.load_state_dict(load_file(str(raw)))
    vae = load_vae(args.run_dir)
    judge, _ = load_classifier(args.run_dir / "baseline" / "model")
    judge.eval()
    sampler = make_sampler("ddim", load_noise_scheduler(args.run_dir))
    classes = list(meta["class_names"])
    wanted = args.classes or [c for c in classes if c != "nv"]
    record: dict = {"run_dir": str(args.run_dir), "per_class": args.per_class, "results": {}}
    for weights, unet in (("ema", ema_unet), ("raw", raw_unet)):
        for g in args.guidance:
            t0 = time.perf_counter()
            scores = fidelity(unet, vae, sampler, judge, classes, wanted, args.per_class, g)
            record["results"][f"{weights} guidance {g:g}"] = {
                "class_fidelity": scores,
                "mean": float(np.mean(list(scores.values()))),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(weights, g, {c: round(v, 3) for c, v in scores.items()})
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
