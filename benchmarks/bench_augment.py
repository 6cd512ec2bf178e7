"""Where `train_augment()`'s time goes: each of its transforms alone, then the whole, applied
image by image (as `LesionDataset` does) to a batch of 64 uint8 images at 64 px; best of 7.
Last, `data.batch_augment`'s `augment_batch`: the same operations drawn per image, run once on
the batch (float, after collation).

    DERMAE_THREADS=2 python benchmarks/bench_augment.py --out benchmarks/results/augment_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from dermae.data.batch_augment import augment_batch
from dermae.data.transforms import train_augment
from dermae.engine.threads import apply_threads


def best_ms(transform: Callable[[Any], Any], images: list[Any], repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            transform(image)
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    threads, why = apply_threads(int(os.environ.get("DERMAE_THREADS", "0")))  # as `dermae` does
    torch.manual_seed(0)
    images = [
        torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8) for _ in range(64)
    ]
    parts = {
        "flips": v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]),
        "rotation (p 0.5)": v2.RandomApply([v2.RandomRotation(degrees=180)], p=0.5),
        "brightness": v2.ColorJitter(brightness=0.1),
        "contrast": v2.ColorJitter(contrast=0.1),
        "saturation": v2.ColorJitter(saturation=0.1),
        "hue": v2.ColorJitter(hue=0.02),
        "train_augment()": train_augment(),
    }
    ms = {name: best_ms(t, images) for name, t in parts.items()}
    batch = {"image": torch.stack(images).float().div_(255.0)}
    ms["augment_batch (batched)"] = best_ms(augment_batch, [batch])
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    record = {"ms_per_batch_of_64": ms, "threads": f"{threads} ({why})", "uptime_after": load}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
