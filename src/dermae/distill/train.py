"""`dermae distill`: a small timm student learns from the fine-tuned teacher (+ hard labels).

Reads `<run_dir>/data/` (real + synthetic train rows) and the teacher classifier
(`<run_dir>/teacher/model/` unless told otherwise); writes `<run_dir>/<stage>/train/` (the loop's
log and resumable state), `<run_dir>/<stage>/model/` (classifier checkpoint with validation
thresholds) and `<run_dir>/<stage>/model_stats.json` (size, FLOPs, CPU latency).
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dermae.classify.baseline import loss_setup
from dermae.classify.common import dataset_targets, target_view, val_evaluator
from dermae.classify.model import (
    Classifier,
    build_classifier,
    classifier_config,
    load_classifier,
    save_classifier,
)
from dermae.classify.thresholds import attach_thresholds
from dermae.config import Config, to_dict
from dermae.data.prepared import load_prepared
from dermae.data.transforms import train_augment
from dermae.distill.task import DistillTask, teacher_logits_for
from dermae.engine.checkpoint import CONFIG_FILE, MODEL_FILE, save_model, seed_everything
from dermae.engine.loop import fit

TEACHER_DIR = "teacher"  # `dermae finetune` writes the teacher classifier to teacher/model
STATS_FILE = "model_stats.json"


def resolve_teacher(run_dir: Path, teacher_dir: str | Path | None = None) -> Path:
    """The teacher's classifier folder: `teacher_dir` (a classifier folder, or a stage folder
    holding `model/`), else `<run_dir>/teacher/model`."""
    start = Path(teacher_dir) if teacher_dir is not None else run_dir / TEACHER_DIR
    for candidate in (start, start / "model"):
        if (candidate / CONFIG_FILE).exists():
            return candidate
    raise FileNotFoundError(
        f"no teacher classifier in {start} (looked for {CONFIG_FILE} there and in model/): "
        "run `dermae finetune` first, or pass the teacher's classifier folder"
    )


@torch.inference_mode()
def student_stats(
    model: nn.Module,
    image_size: int,
    weights_file: str | Path | None = None,
    latency_runs: int = 30,
    warmup: int = 5,
) -> dict[str, Any]:
    """Parameters, size on disk, FLOPs per image and CPU batch-1 latency of `model`.

    `model` takes [N, 3, S, S] images (a `Classifier` takes them in [0, 1]). FLOPs are what
    `torch.utils.flop_counter` counts (matmuls and convolutions, 2 per multiply-add), for one
    image at `image_size`. Latency: eager fp32 on CPU, batch 1, median of `latency_runs` timed
    forwards after `warmup`, with the process's current torch thread count. Size: the
    safetensors file when given, else the same weights serialised to a temporary one.
    """
    model = copy.deepcopy(model).cpu().eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    if weights_file is None:
        with tempfile.TemporaryDirectory() as tmp:
            net = model.net if isinstance(model, Classifier) else model
            size_bytes = (save_model(tmp, net, {}) / MODEL_FILE).stat().st_size
    else:
        size_bytes = Path(weights_file).stat().st_size
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(latency_runs):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return {
        "parameters": int(params),
        "size_bytes": int(size_bytes),
        "size_mb": round(size_bytes / 2**20, 3),
        "flops_per_image": int(counter.get_total_flops()),
        "image_size": int(image_size),
        "latency_ms_cpu_batch1": round(1000 * statistics.median(times), 3),
        "latency_runs": latency_runs,
        "torch_threads": torch.get_num_threads(),
    }


def _check_teacher(teacher_config: dict[str, Any], class_names: list[str], where: Path) -> None:
    if list(teacher_config["class_names"]) != list(class_names):
        raise ValueError(
            f"teacher {where} predicts {teacher_config['class_names']} but the prepared data "
            f"has {class_names} (data.label): fine-tune the teacher on the same labels, or pass "
            "the matching teacher_dir"
        )


def distill(
    cfg: Config,
    run_dir: str | Path,
    teacher_dir: str | Path | None = None,
    stage: str = "student",
    include_synthetic: bool | None = None,
    resume: bool = True,
) -> Path:
    """Distil the teacher into `cfg.distill.model`; returns `<run_dir>/<stage>/model`.

    `teacher_dir`, `stage` and `include_synthetic` (default `cfg.data.include_synthetic`)
    let the ablation distil other teachers / data mixes into other folders.
    """
    dcfg = cfg.distill
    run_dir = Path(run_dir)
    teacher_dir = resolve_teacher(run_dir, teacher_dir)
    teacher, teacher_config = load_classifier(teacher_dir)
    if include_synthetic is None:
        include_synthetic = cfg.data.include_synthetic
    prepared = load_prepared(run_dir, with_synthetic=include_synthetic)
    view = target_view(prepared, cfg.data.label)
    _check_teacher(teacher_config, view.class_names, teacher_dir)

    rows = prepared.rows(
        "train",
        include_synthetic=include_synthetic,
        synthetic_ratio=dcfg.synthetic_ratio,
        seed=cfg.seed,
    )
    train_set = prepared.dataset(rows, train_augment() if dcfg.augment else None)
    val_set = prepared.dataset(prepared.rows("val"))
    targets = dataset_targets(train_set, view.key)
    weights, sampler = loss_setup(dcfg.loss, targets, len(view.class_names))

    cached, cache_seconds = None, 0.0
    if dcfg.cache_teacher_logits:
        start = time.perf_counter()
        cached = teacher_logits_for(teacher, prepared.dataset(rows))  # un-augmented
        cache_seconds = time.perf_counter() - start

    seed_everything(dcfg.train.seed)
    student = build_classifier(
        classifier_config(
            dcfg.model,
            view.class_names,
            view.malignant_classes,
            prepared.image_size,
            {"drop_rate": dcfg.drop_rate},
        )
    )
    task = DistillTask(student, teacher, view.key, dcfg.alpha, dcfg.temperature, weights, cached)
    train_rows = {
        "real": int((rows["source"] == "real").sum()),
        "synthetic": int((rows["source"] == "synthetic").sum()),
    }
    provenance = {
        "teacher": str(teacher_dir),
        "teacher_arch": teacher_config["arch"],
        "teacher_image_size": int(teacher_config["image_size"]),
        "alpha": dcfg.alpha,
        "temperature": dcfg.temperature,
        "cache_teacher_logits": dcfg.cache_teacher_logits,
        "train_rows": train_rows,
    }
    out = run_dir / stage
    result = fit(
        task,
        train_set,
        dcfg.train,
        out / "train",
        evaluate=val_evaluator(val_set, view),
        sampler_weights=sampler,
        resume=resume,
        desc=stage,
        run_config={"stage": to_dict(dcfg), "include_synthetic": include_synthetic, **provenance},
        select_metric="balanced_accuracy",
        num_workers=cfg.data.num_workers,
    )
    extra = attach_thresholds(result.model, val_set, view, cfg.evaluate.specificities)
    model_dir = save_classifier(out / "model", result.model, {**extra, "distilled": provenance})

    stats = {
        "arch": dcfg.model,
        **student_stats(
            result.model, prepared.image_size, model_dir / MODEL_FILE, dcfg.latency_runs
        ),
        "teacher": {
            "arch": teacher_config["arch"],
            **student_stats(
                teacher,
                int(teacher_config["image_size"]),
                teacher_dir / MODEL_FILE,
                dcfg.latency_runs,
            ),
        },
        "train_seconds": round(result.seconds, 2),
        "teacher_cache_seconds": round(cache_seconds, 2),
        "steps": result.step,
        "best": result.best,
    }
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return model_dir
