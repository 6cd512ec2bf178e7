"""`dermae distill`: a small timm student learns from the fine-tuned teacher (+ hard labels).

Reads `<run_dir>/data/` (real + synthetic train rows) and the teacher classifier
(`<run_dir>/teacher/model/` unless told otherwise); writes `<run_dir>/<stage>/train/` (the loop's
log and resumable state), `<run_dir>/<stage>/model/` (classifier checkpoint with validation
thresholds) and `<run_dir>/<stage>/model_stats.json` (size, FLOPs, CPU latency).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dermae.classify.baseline import baseline_seed_dirs, chosen_loss
from dermae.classify.cnn_teacher import STAGE as CNN_TEACHER
from dermae.classify.cnn_teacher import cnn_teacher_members
from dermae.classify.common import target_view
from dermae.classify.ensemble import build_ensemble
from dermae.classify.model import (
    Classifier,
    build_classifier,
    classifier_config,
    load_classifier,
    save_classifier,
)
from dermae.classify.thresholds import attach_thresholds
from dermae.classify.trainer import Recipe, TrainSetup, train_classifier
from dermae.config import Config, to_dict, without_later_keys
from dermae.data.errors import DataError
from dermae.data.prepared import PreparedData, load_prepared
from dermae.distill.task import DistillTask, teacher_logits_for
from dermae.distill.views import TeacherViews, build_teacher_views
from dermae.engine.checkpoint import CONFIG_FILE, MODEL_FILE, save_model
from dermae.layout import TEACHER, RunLayout

STATS_FILE = "model_stats.json"


def resolve_teacher(run_dir: Path, teacher_dir: str | Path | None = None) -> Path:
    """The teacher's classifier folder: `teacher_dir` (a classifier folder, or a stage folder
    holding `model/`), else `<run_dir>/teacher/model`."""
    start = Path(teacher_dir) if teacher_dir is not None else run_dir / TEACHER
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


def _seed_member(folder: Path) -> Path:
    if not (folder / CONFIG_FILE).exists():
        raise FileNotFoundError(
            f"no classifier in {folder}, an extra seed of the baseline that distill.baseline_seeds "
            "asks for: run the pipeline's baseline_seeds stage (`dermae run`), or lower "
            "distill.baseline_seeds"
        )
    return folder


def load_teacher(
    cfg: Config, run_dir: Path, teachers: list[str | Path], ensemble_dir: Path
) -> tuple[nn.Module, dict[str, Any], Path]:
    """One teacher classifier, or an ensemble of several saved as `ensemble_dir`.

    Each entry of `teachers` is a classifier folder, or a run-dir stage folder holding `model/`;
    the entry `baseline` brings the `distill.baseline_seeds` extra seeds of (b) with it (unless
    `distill.seeds_in_teacher` is false), and
    the entry `cnn_teacher` stands for the `cnn_teacher` stage's members.
    """
    folders = []
    for entry in teachers:
        if str(entry) == CNN_TEACHER:
            folders += cnn_teacher_members(cfg, run_dir)
            continue
        folders.append(resolve_teacher(run_dir, run_dir / entry))
        if str(entry) == "baseline" and cfg.distill.seeds_in_teacher:
            folders += [
                _seed_member(d) for d in baseline_seed_dirs(run_dir, cfg.distill.baseline_seeds)
            ]
    if len(folders) == 1:
        teacher, config = load_classifier(folders[0])
        return teacher, config, folders[0]
    members = [load_classifier(f)[0] for f in folders]
    ensemble = build_ensemble(members, [str(f) for f in folders])
    # Thresholds on validation, like every classifier, so the ensemble is scored like them
    # (at its largest member's resolution; smaller members resize from it).
    prepared = load_prepared(run_dir, with_synthetic=False)
    with contextlib.suppress(DataError):  # no sources: resized images (distill warns)
        prepared = prepared.at_size(max(prepared.image_size, int(ensemble.config["image_size"])))
    val_set = prepared.dataset(prepared.rows("val"))
    view = target_view(prepared, cfg.data.label)
    extra = attach_thresholds(ensemble, val_set, view, cfg.evaluate.specificities)
    save_classifier(ensemble_dir, ensemble, extra)
    return ensemble, {**ensemble.config, **extra}, ensemble_dir


def _teacher_view(
    prepared: PreparedData, teacher_size: int, student_size: int
) -> tuple[int | None, str]:
    """(size of the extra "teacher_image" view or None, what the teacher sees, in words).

    A teacher at a higher resolution than the student gets the student's augmented view at its
    own size, cached from the source files. Without them it gets the student's images resized
    up (less than it was trained on), and says so. A teacher at a lower resolution gets the
    student's view resized down (`DistillTask`).
    """
    if teacher_size < student_size:
        return None, "the student's images, resized down"
    if teacher_size == student_size:
        return None, "the student's images"
    try:
        prepared.at_size(teacher_size)
    except DataError as err:
        print(
            f"distill: warning: the {teacher_size}-px teacher gets the student's "
            f"{prepared.image_size}-px images resized up: {err}"
        )
        return None, "the student's images, resized up"
    return teacher_size, "its own resolution"


def distill(
    cfg: Config,
    run_dir: str | Path,
    teacher_dir: str | Path | None = None,
    stage: str = "student",
    include_synthetic: bool | None = None,
    resume: bool = True,
    teachers: list[str | Path] | None = None,
) -> Path:
    """Distil the teacher(s) into `cfg.distill.model`; returns `<run_dir>/<stage>/model`.

    The teachers are `teachers`, else `[teacher_dir]`, else `cfg.distill.teachers`; two or
    more are distilled as one ensemble, saved next to the student (`teacher_ensemble/model`
    for the pipeline's student). `stage` and `include_synthetic` (default
    `cfg.data.include_synthetic`) let the ablation distil other teachers / data mixes.
    """
    dcfg = cfg.distill
    run_dir = Path(run_dir)
    if teachers is None:
        teachers = [teacher_dir] if teacher_dir is not None else list(dcfg.teachers)
    ensemble_dir = RunLayout(run_dir).ensemble_model
    if stage != "student":
        ensemble_dir = run_dir / f"{stage}_teacher" / "model"
    teacher, teacher_config, teacher_path = load_teacher(cfg, run_dir, teachers, ensemble_dir)
    if include_synthetic is None:
        include_synthetic = cfg.data.include_synthetic
    recipe = Recipe.of(dcfg, loss=chosen_loss(run_dir, dcfg.loss))
    if not include_synthetic:
        recipe = dataclasses.replace(recipe, synthetic_ratio=0.0)
    cache_seconds = 0.0
    teacher_size = int(teacher_config["image_size"])
    prepared = load_prepared(run_dir, with_synthetic=False)
    student_size = dcfg.image_size or prepared.image_size
    view_size, view = _teacher_view(prepared, teacher_size, student_size)
    views: TeacherViews | None = None

    def make_task(setup: TrainSetup) -> DistillTask:
        nonlocal cache_seconds, views
        _check_teacher(teacher_config, setup.view.class_names, teacher_path)
        cached = None
        if dcfg.teacher_views > 0:  # drawn when the first step needs them
            views = build_teacher_views(
                teacher,
                setup.train_set,
                dcfg.teacher_views,
                seed=recipe.train.seed,
                precision=dcfg.teacher_precision,
            )
            setup.train_set = views
        elif dcfg.cache_teacher_logits:
            start = time.perf_counter()
            clean = setup.prepared.dataset(setup.train_set.rows, view_size=view_size)
            cached = teacher_logits_for(teacher, clean, precision=dcfg.teacher_precision)
            cache_seconds = time.perf_counter() - start
        student = build_classifier(
            classifier_config(
                dcfg.model,
                setup.view.class_names,
                setup.view.malignant_classes,
                setup.prepared.image_size,
                {"drop_rate": dcfg.drop_rate},
            )
        )
        return DistillTask(
            student,
            teacher,
            setup.view.key,
            dcfg.alpha,
            dcfg.temperature,
            setup.class_weights,
            cached,
            synthetic_hard_labels=dcfg.synthetic_hard_labels,
            mixup=dcfg.mixup,
            teacher_precision=dcfg.teacher_precision,
            views=views,
            relation_weight=dcfg.relation_weight,
        )

    provenance = {
        "teacher": str(teacher_path),
        "teacher_arch": teacher_config["arch"],
        "teacher_image_size": teacher_size,
        "teacher_members": teacher_config.get("member_sources", [str(teacher_path)]),
        "alpha": dcfg.alpha,
        "temperature": dcfg.temperature,
        "cache_teacher_logits": dcfg.cache_teacher_logits,
        "synthetic_hard_labels": dcfg.synthetic_hard_labels,
        "mixup": dcfg.mixup,
    }
    if dcfg.teacher_views > 0:  # absent at 0, as before this key existed
        provenance["teacher_views"] = dcfg.teacher_views
    if teacher_size != student_size:  # else it sees the student's images, as before this key
        provenance["teacher_view"] = view
    trained = train_classifier(
        cfg,
        run_dir,
        stage,
        recipe,
        make_task,
        resume=resume,
        run_config={"stage": without_later_keys("distill", to_dict(dcfg)), **provenance},
        extra_config={"distilled": provenance},
        upstream=[teacher_path],
        image_size=dcfg.image_size,
        teacher_size=view_size,
    )
    model_dir = trained.model_dir
    stats_file = run_dir / stage / STATS_FILE
    if views is not None and not views.build_seconds and stats_file.exists():
        # The loop only reloaded a finished stage: the views' cost is the earlier call's.
        cache_seconds = json.loads(stats_file.read_text()).get("teacher_cache_seconds", 0.0)
    elif views is not None:
        cache_seconds = views.build_seconds
    stats = {
        "arch": dcfg.model,
        **student_stats(
            trained.model,
            int(trained.model.config["image_size"]),
            model_dir / MODEL_FILE,
            dcfg.latency_runs,
        ),
        "teacher": {
            "arch": teacher_config["arch"],
            **student_stats(
                teacher,
                int(teacher_config["image_size"]),
                teacher_path / MODEL_FILE,
                dcfg.latency_runs,
            ),
        },
        "train_rows": trained.train_rows,
        "train_seconds": round(trained.result.seconds, 2),
        "teacher_cache_seconds": round(cache_seconds, 2),
        "steps": trained.result.step,
        "best": trained.result.best,
        "selected": trained.result.selected,
    }
    stats_file.write_text(json.dumps(stats, indent=2))
    return model_dir
