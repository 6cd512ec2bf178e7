"""Where a classifier training step's time goes on this CPU: data, student, teacher.

    python benchmarks/bench_step_breakdown.py runs/cpu-full-fm \
        --student resnet10t --student mobilenetv3_small_100 \
        --teacher runs/cpu-full-student-mobilenetv3_small_100/teacher_ensemble/model \
        --out benchmarks/results/step_breakdown_amx.json   # 90 s, 2 threads, idle machine

Each part is timed alone, as the training loop runs it (batch 64, `num_workers=0`, precision
`auto`), median of `--steps` batches after one warm-up:
- `data_augmented`: drawing one batch from the train split with `train_augment()` (flips,
  rotation, colour jitter per image, then collation), no model;
- `data_plain`: the same batch without augmentation (the uint8 cache read and collation);
- `data_batch_augmented`: the plain batch, then `augment_batch` (`data.batch_augment`: the same
  operations, drawn per image, run once per batch);
- `student_step[arch]`: forward, backward and AdamW step of a fresh model on a fixed batch,
  at precision `auto` (bf16 where native) and, as `[arch, fp32]`, without autocast;
  classifiers keep their weights channels_last; `[..., contiguous]` is the layout before that;
- `teacher_forward`: the saved teacher's forward on a fixed batch (no grad), as KD runs it live
  (`[fp32]`: without autocast; `[contiguous]`: the old layout).
A (b) step is about data_augmented + student_step; a live-KD (d) step adds teacher_forward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dermae.classify.model import build_classifier, classifier_config, load_classifier
from dermae.data.batch_augment import augment_batch
from dermae.data.prepared import load_prepared
from dermae.data.transforms import to_resolution, train_augment
from dermae.engine.precision import autocast, resolve_precision
from dermae.engine.threads import apply_threads

BATCH = 64


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def median_seconds(step: Callable[[], object], steps: int) -> dict[str, float]:
    step()  # warm-up: allocations, oneDNN kernel choice
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "steps": steps}


def batch_drawer(dataset, seed: int) -> Callable[[], dict[str, torch.Tensor]]:
    """Next batch of a shuffled loader over `dataset`, restarted when it runs out."""
    loader = DataLoader(
        dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    state = {"it": iter(loader)}

    def draw() -> dict[str, torch.Tensor]:
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])

    return draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run whose data/ is prepared")
    parser.add_argument("--student", action="append", default=[], help="timm architecture")
    parser.add_argument("--teacher", type=Path, help="a saved classifier or ensemble folder")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    threads, why = apply_threads(int(os.environ.get("DERMAE_THREADS", "0")))
    load_before = uptime()
    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    prepared = load_prepared(args.run_dir, with_synthetic=False)
    rows = prepared.rows("train")
    results: dict[str, object] = {
        "data_augmented": median_seconds(
            batch_drawer(prepared.dataset(rows, train_augment()), 0), args.steps
        ),
        "data_plain": median_seconds(batch_drawer(prepared.dataset(rows), 0), args.steps),
    }
    plain = batch_drawer(prepared.dataset(rows), 0)
    results["data_batch_augmented"] = median_seconds(lambda: augment_batch(plain()), args.steps)
    batch = batch_drawer(prepared.dataset(rows, train_augment()), 1)()
    images, labels = batch["image"], batch["label"]
    layouts = ("channels_last", "contiguous")
    for arch, mode, layout in (
        (a, m, lay) for a in args.student for m in ("auto", "no") for lay in layouts
    ):
        torch.manual_seed(0)
        model = build_classifier(
            classifier_config(
                arch, prepared.class_names, prepared.malignant_classes, prepared.image_size
            )
        ).train()
        if layout == "contiguous":
            model.to(memory_format=torch.contiguous_format)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def train_step(model=model, optimizer=optimizer, mode=mode) -> None:
            with autocast(device, resolve_precision(mode, device)):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        name = arch if mode == "auto" else f"{arch}, fp32"
        name += ", contiguous" if layout == "contiguous" else ""
        results[f"student_step[{name}]"] = median_seconds(train_step, args.steps)
    if args.teacher is not None:
        teacher, config = load_classifier(args.teacher)
        teacher_images = to_resolution(images, int(config["image_size"]))

        for mode, layout in (("auto", "channels_last"), ("no", "channels_last"), ("auto", "")):
            if not layout:  # last: the old layout
                teacher.to(memory_format=torch.contiguous_format)

            @torch.no_grad()
            def teacher_step(mode=mode) -> None:
                with autocast(device, resolve_precision(mode, device)):
                    teacher(teacher_images)

            name = "teacher_forward" if mode == "auto" else "teacher_forward[fp32]"
            name = name if layout else "teacher_forward[contiguous]"
            results[name] = median_seconds(teacher_step, args.steps)
        results["teacher"] = {"folder": str(args.teacher), "arch": config["arch"]}
    record = {
        "command": "python " + " ".join(sys.argv),
        "batch_size": BATCH,
        "image_size": prepared.image_size,
        "train_rows": len(rows),
        "threads": threads,
        "threads_reason": why,
        "precision": precision,
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for name, value in results.items():
        if "median_s" in value:
            print(f"{name:40s} {value['median_s'] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
