"""What caching the teacher's logits saves in `dermae distill`, on this machine's CPU.

Builds a generated prepared dataset (timing does not depend on image content), a random
ViT-Ti/8 teacher at the working resolution (the fine-tune default) and runs
`dermae.distill.train.distill` twice: live teacher, then cached logits. Also times one
training step of each task on a fixed batch. Writes JSON to --out.

    PYTHONPATH=src:. python benchmarks/bench_distill_cache.py --out /tmp/distill/cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.config import Config, DataConfig, DistillConfig, TrainConfig
from dermae.data.classes import HAM10000_CLASSES, MALIGNANT_CODES
from dermae.distill.task import DistillTask
from dermae.distill.train import STATS_FILE, distill
from tests.helpers.tiny_data import make_prepared

HAM_CLASSES = list(HAM10000_CLASSES)
HAM_MALIGNANT = [c for c in HAM_CLASSES if c in MALIGNANT_CODES]

TEACHER_KWARGS = {"patch_size": 8, "embed_dim": 192, "depth": 12, "num_heads": 3}


def step_seconds(task: DistillTask, batch: dict, repeats: int) -> float:
    """Median seconds of forward + backward + AdamW step on one fixed batch."""
    opt = torch.optim.AdamW(task.model.parameters(), lr=1e-4)
    task.train()
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # first steps warm up the allocator / oneDNN kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def stats_rows(stage_dir: Path) -> int:
    rows = json.loads((stage_dir / "model" / "config.json").read_text())["distilled"]["train_rows"]
    return rows["real"] + rows["synthetic"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/distill/cache.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill/bench_run"))
    parser.add_argument("--size", type=int, default=64)
    # make_prepared puts 60 % of each class's lesions in train: 100/class -> 420 train images.
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--student", default="efficientnet_b0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = args.work
    make_prepared(work, args.per_class, args.size, tuple(HAM_CLASSES))
    torch.manual_seed(0)
    teacher_cfg = classifier_config(
        "vit_tiny_patch16_224", HAM_CLASSES, HAM_MALIGNANT, args.size, TEACHER_KWARGS
    )
    teacher = build_classifier(teacher_cfg)
    save_classifier(work / "teacher" / "model", teacher)

    student = build_classifier(
        classifier_config(args.student, HAM_CLASSES, HAM_MALIGNANT, args.size)
    )
    batch = {
        "image": torch.rand(args.batch, 3, args.size, args.size),
        "label": torch.arange(args.batch) % 7,
        "index": torch.arange(args.batch),
    }
    live = step_seconds(DistillTask(student, teacher), batch, args.repeats)
    cache = torch.randn(args.batch, 7)
    cached = step_seconds(DistillTask(student, teacher, cached_logits=cache), batch, args.repeats)

    runs = {}
    for use_cache in (False, True):
        train = TrainConfig(
            epochs=args.epochs, batch_size=args.batch, lr=1e-3, log_every=5, eval_every=10_000
        )
        cfg = Config(
            run_dir=str(work),
            data=DataConfig(root=str(work), include_synthetic=False),
            distill=DistillConfig(
                model=args.student, cache_teacher_logits=use_cache, latency_runs=10, train=train
            ),
        )
        stage = "cached" if use_cache else "live"
        start = time.perf_counter()
        distill(cfg, work, stage=stage, resume=False)
        wall = time.perf_counter() - start
        stats = json.loads((work / stage / STATS_FILE).read_text())
        runs[stage] = {
            "wall_seconds": round(wall, 1),
            "train_seconds": stats["train_seconds"],
            "teacher_cache_seconds": stats["teacher_cache_seconds"],
            "steps": stats["steps"],
            "train_images": stats_rows(work / stage),
        }
    result = {
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg(),
        },
        "setup": {
            "image_size": args.size,
            "batch": args.batch,
            "epochs": args.epochs,
            "student": args.student,
            "teacher": f"vit_tiny_patch16_224 {TEACHER_KWARGS}",
        },
        "step_seconds": {"live": round(live, 3), "cached": round(cached, 3)},
        "runs": runs,
    }
    saving = 1 - runs["cached"]["wall_seconds"] / runs["live"]["wall_seconds"]
    result["wall_saving_fraction"] = round(saving, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
