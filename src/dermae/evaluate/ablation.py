"""`dermae ablate`: is DerMAE better than what a user would do without it? Measured like for like.

Every variant is the same student (`distill.model`, `distill.augment`, `distill.drop_rate`),
trained for the same budget (`distill.train`, so the same data order) with the same decision
rule (argmax; thresholds chosen on validation) and the same imbalance handling as (b), except
where that is the variable under test:
  (a) real data, plain cross-entropy                  — what a user does without dermae
  (b) real data, the simple fix: the baseline's loss (weighted CE, a balanced sampler, or
      with `baseline.loss: auto` whichever of the two is better on validation)
  (c) (b) + the synthetic images, with hard labels     — isolates synthesis for the student
  (d) DerMAE: (b)'s recipe + KD from the MAE teacher (+ synthetic transfer images)
  (e) as (d), teacher fine-tuned from scratch          — isolates MAE pre-training
  (f) as (d), teacher pre-trained without synthetics   — isolates synthesis for the teacher
  (g) (b) + the student's mixup (`distill.mixup`), no teacher — isolates the teacher when
      the student mixes its batches (with `distill.mixup: 0`, (b) is already that control)
plus the teachers themselves. Every model is scored on the test split with lesion-bootstrap
CIs, and every variant (and teacher) is compared with (b) by a paired bootstrap over the same
lesion resamples. The verdict — the paired differences against (b) — comes first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermae.classify.baseline import baseline_seed_dirs, chosen_loss, train_baseline
from dermae.classify.finetune import finetune
from dermae.config import BaselineConfig, Config
from dermae.data.prepared import load_prepared
from dermae.distill.train import STATS_FILE, distill
from dermae.engine.checkpoint import load_config_json
from dermae.evaluate.ablation_text import (
    HEADLINE,
    LABELS,
    TEACHERS,
    VARIANTS,
    ablation_markdown,
    seed_verdict,
    verdict,
)
from dermae.evaluate.components import component_effects
from dermae.evaluate.external import evaluate_external, paired_on_external
from dermae.evaluate.paired import REFERENCE, paired_against_reference, paired_metric_fn, probs_of
from dermae.evaluate.report import metrics_table
from dermae.evaluate.run import evaluate_model
from dermae.evaluate.seeds import seed_paired
from dermae.layout import STUDENT, RunLayout
from dermae.pretrain.train import ENCODER_DIR, pretrain


def student_recipe(cfg: Config, loss: str) -> BaselineConfig:
    """The student's architecture, augmentation and budget, trained without a teacher."""
    return BaselineConfig(
        model=cfg.distill.model,
        loss=loss,
        augment=cfg.distill.augment,
        drop_rate=cfg.distill.drop_rate,
        train=cfg.distill.train,
    )


def train_at_student_size(
    cfg: Config, run_dir: Path, stage: str, recipe: BaselineConfig, **kwargs: Any
) -> Path:
    """`train_baseline` at the student's resolution (`distill.image_size`), so that a variant
    without a teacher sees the pixels (d) sees."""
    return train_baseline(cfg, run_dir, stage, recipe, image_size=cfg.distill.image_size, **kwargs)


def seeded_distill(cfg: Config, k: int) -> Config:
    """`cfg` with the student's training seed moved by `k` (the ablation's seed + k copies)."""
    train = dataclasses.replace(cfg.distill.train, seed=(cfg.distill.train.seed or 0) + k)
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, train=train))


def _has_model(folder: Path) -> bool:
    return (folder / "model.safetensors").exists()


def _simple_fix(cfg: Config, run_dir: Path, resume: bool) -> tuple[Path, dict[str, Any]]:
    """(b): the student recipe with the baseline's loss; the pipeline's baseline when that is
    the same recipe (`baseline.loss: auto` included), else trained here the same way."""
    recipe = student_recipe(cfg, cfg.baseline.loss)
    same_size = cfg.distill.image_size in (None, cfg.data.image_size)
    if recipe == cfg.baseline and same_size and _has_model(RunLayout(run_dir).baseline_model):
        folder = RunLayout(run_dir).baseline_model  # same recipe: reuse, don't retrain
    else:
        folder = train_at_student_size(cfg, run_dir, "ablate/b_simple_fix", recipe, resume=resume)
    config = load_config_json(folder)
    return folder, {"loss": config["loss"], "choice": config.get("simple_fix")}


def _kd_teachers(cfg: Config, teacher_stage: str) -> list[str]:
    """`distill.teachers` with the MAE teacher swapped for another one (variants e, f)."""
    swapped = [teacher_stage if t == "teacher" else t for t in cfg.distill.teachers]
    if swapped == list(cfg.distill.teachers):
        raise ValueError(
            "distill.teachers holds no 'teacher' entry, so variants (e)/(f) have no MAE teacher "
            "to replace: drop them from ablate.variants"
        )
    return swapped


def _variant_models(
    cfg: Config, run_dir: Path, resume: bool
) -> tuple[dict[str, Path], dict[str, Any]]:
    variants = list(cfg.ablate.variants)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"ablate.variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
    models: dict[str, Path] = {}
    notes: dict[str, Any] = {}
    b_dir, notes["simple_fix"] = _simple_fix(cfg, run_dir, resume)
    simple_loss = notes["simple_fix"]["loss"]
    # With data.include_synthetic off no trainer reads them, so (c) would be (b) again.
    has_synth = cfg.data.include_synthetic and bool(
        load_prepared(run_dir).manifest["source"].eq("synthetic").sum()
    )
    if "a" in variants:
        models["a_real_ce"] = train_at_student_size(
            cfg, run_dir, "ablate/a_real_ce", student_recipe(cfg, "ce"), resume=resume
        )
    models[REFERENCE] = b_dir
    if "c" in variants:
        if has_synth and cfg.distill.synthetic_ratio > 0:
            models["c_real_synth"] = train_at_student_size(
                cfg,
                run_dir,
                "ablate/c_real_synth",
                student_recipe(cfg, simple_loss),
                synthetic_ratio=cfg.distill.synthetic_ratio,
                resume=resume,
            )
        else:
            notes["c_real_synth"] = (
                "skipped: no synthetic images (or data.include_synthetic false, "
                "or distill.synthetic_ratio=0)"
            )
    if "d" in variants and _has_model(RunLayout(run_dir).student_model):
        models["d_dermae"] = RunLayout(run_dir).student_model
    if "e" in variants:
        scratch = dataclasses.replace(
            cfg, finetune=dataclasses.replace(cfg.finetune, init="scratch")
        )
        finetune(scratch, run_dir, resume=resume, stage="ablate/e_teacher")
        models["e_no_mae"] = distill(
            cfg,
            run_dir,
            stage="ablate/e_no_mae",
            teachers=_kd_teachers(cfg, "ablate/e_teacher"),
            resume=resume,
        )
    if "f" in variants:
        if has_synth and cfg.pretrain.synthetic_ratio > 0:
            real_only = dataclasses.replace(
                cfg, pretrain=dataclasses.replace(cfg.pretrain, synthetic_ratio=0.0)
            )
            pretrain(real_only, run_dir, resume=resume, stage="ablate/f_pretrain")
            encoder = run_dir / "ablate/f_pretrain" / ENCODER_DIR
            finetune(cfg, run_dir, resume=resume, stage="ablate/f_teacher", encoder=encoder)
            models["f_no_synth_pretrain"] = distill(
                cfg,
                run_dir,
                stage="ablate/f_no_synth_pretrain",
                teachers=_kd_teachers(cfg, "ablate/f_teacher"),
                resume=resume,
            )
        else:
            notes["f_no_synth_pretrain"] = "skipped: the MAE teacher saw no synthetic images"
    if "g" in variants:
        if cfg.distill.mixup > 0:
            mixed = dataclasses.replace(student_recipe(cfg, simple_loss), mixup=cfg.distill.mixup)
            models["g_mixup_no_kd"] = train_at_student_size(
                cfg, run_dir, "ablate/g_mixup_no_kd", mixed, resume=resume
            )
        else:
            notes["g_mixup_no_kd"] = "skipped: the student mixes no batches (distill.mixup=0)"
    for name, (stage, _) in TEACHERS.items():
        if _has_model(RunLayout(run_dir).model(stage)):
            models[name] = RunLayout(run_dir).model(stage)
    notes["like_for_like"] = _recipe_differences(cfg, run_dir, simple_loss)
    notes["sizes"] = _teacher_and_student_sizes(run_dir)
    return models, notes


def _seed_models(
    cfg: Config, run_dir: Path, b_dir: Path, simple_loss: str, resume: bool
) -> dict[str, list[Path]]:
    """(b) and the `ablate.seed_variants` that trained ((d) and (g) by default, (c) on request)
    at `ablate.seeds` seeds each; the first of each list is the one-seed model.

    Only the seed changes (initialisation, data order, augmentation and mixup draws); (d) keeps
    the run's teacher. Where (b) is the pipeline's baseline, its seeds seed + k are the
    baseline_seeds stage's members (same recipe and rule), so they are not trained twice.
    """
    layout = RunLayout(run_dir)
    if cfg.ablate.seeds <= 1 or not _has_model(layout.student_model):
        return {}
    recipe = student_recipe(cfg, simple_loss)
    members = baseline_seed_dirs(run_dir, cfg.distill.baseline_seeds)
    reuse = b_dir == layout.baseline_model
    wanted = set(cfg.ablate.seed_variants)
    seeds = {REFERENCE: [b_dir]}
    if "d" in wanted:
        seeds["d_dermae"] = [layout.student_model]
    for k in range(1, cfg.ablate.seeds):
        if reuse and k <= len(members) and _has_model(members[k - 1]):
            seeds[REFERENCE].append(members[k - 1])
        else:
            seed = (cfg.baseline.train.seed or 0) + k
            seeded = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, seed=seed))
            stage = f"ablate/seeds/b_seed_plus_{k}"
            seeds[REFERENCE].append(
                train_at_student_size(cfg, run_dir, stage, seeded, resume=resume)
            )
        if "d" in wanted:
            stage = f"ablate/seeds/d_seed_plus_{k}"
            seeds["d_dermae"].append(
                distill(seeded_distill(cfg, k), run_dir, stage=stage, resume=resume)
            )
    c_dir = run_dir / "ablate" / "c_real_synth" / "model"
    if "c" in wanted and "c" in cfg.ablate.variants and _has_model(c_dir):  # (c) trained
        seeds["c_real_synth"] = [c_dir]
        for k in range(1, cfg.ablate.seeds):
            train = dataclasses.replace(recipe.train, seed=(recipe.train.seed or 0) + k)
            stage = f"ablate/seeds/c_seed_plus_{k}"
            seeds["c_real_synth"].append(
                train_at_student_size(
                    cfg,
                    run_dir,
                    stage,
                    dataclasses.replace(recipe, train=train),
                    synthetic_ratio=cfg.distill.synthetic_ratio,
                    resume=resume,
                )
            )
    g_dir = run_dir / "ablate" / "g_mixup_no_kd" / "model"
    if "g" in wanted and "g" in cfg.ablate.variants and _has_model(g_dir):  # distill.mixup > 0
        mixed = dataclasses.replace(recipe, mixup=cfg.distill.mixup)
        seeds["g_mixup_no_kd"] = [g_dir]
        for k in range(1, cfg.ablate.seeds):
            train = dataclasses.replace(mixed.train, seed=(mixed.train.seed or 0) + k)
            stage = f"ablate/seeds/g_seed_plus_{k}"
            seeded = dataclasses.replace(mixed, train=train)
            seeds["g_mixup_no_kd"].append(
                train_at_student_size(cfg, run_dir, stage, seeded, resume=resume)
            )
    return seeds


def _seed_study(
    cfg: Config,
    run_dir: Path,
    seed_models: dict[str, list[Path]],
    predictions: dict[str, pd.DataFrame],
    results: dict[str, dict[str, Any]],
) -> tuple[dict[str, list[pd.DataFrame]], dict[str, Any]]:
    """(each seeded model's test predictions, one frame per seed; the study): test scores of
    every seed and the paired comparison of the means over seeds. The teachers (one model
    each) are paired with (b)'s mean too: that is the bar a student of theirs can hope to
    reach."""
    out = RunLayout(run_dir).ablate / "eval_seeds"
    prepared = load_prepared(run_dir, with_synthetic=False)
    frames: dict[str, list[pd.DataFrame]] = {}
    scores: dict[str, list[dict[str, Any]]] = {}
    listed_models = dict(seed_models)
    for name in TEACHERS:
        if name in predictions:
            listed_models[name] = [Path(results[name]["model"])]
    for name, folders in listed_models.items():
        frames[name], scores[name] = [predictions[name]], [results[name]["scalars"]]
        for k, folder in enumerate(folders[1:], start=1):
            where = out / f"{name}_seed_plus_{k}"
            scored = evaluate_model(folder, prepared, cfg.evaluate.split, where, cfg.evaluate)
            frames[name].append(pd.read_csv(where / "predictions.csv"))
            scores[name].append(scored["scalars"])
    reference = frames[REFERENCE][0]
    for name, listed in frames.items():
        for frame in listed:
            if list(frame["image_id"]) != list(reference["image_id"]):
                raise RuntimeError(f"a seed of {name} was scored on other images than (b)")
    targets = reference["target"].to_numpy()
    metric_fn = paired_metric_fn(
        prepared.malignant_index, cfg.evaluate.ece_bins, np.unique(targets)
    )
    paired = seed_paired(
        targets,
        reference["group_id"].to_numpy(),
        {name: [probs_of(f) for f in listed] for name, listed in frames.items()},
        REFERENCE,
        metric_fn,
        cfg.evaluate.bootstrap,
        cfg.seed,
    )
    return frames, {
        "n": cfg.ablate.seeds,
        "models": {name: [str(f) for f in folders] for name, folders in listed_models.items()},
        "test_balanced_accuracy": {
            name: [s.get("balanced_accuracy") for s in listed] for name, listed in scores.items()
        },
        "paired": paired,
    }


def _teacher_and_student_sizes(run_dir: Path) -> dict[str, Any] | None:
    """Parameters and FLOPs per image of the student and the teacher it learned from."""
    path = RunLayout(run_dir).root / STUDENT / STATS_FILE
    if not path.exists():
        return None
    stats = json.loads(path.read_text())
    keys = ("parameters", "flops_per_image", "image_size")
    distilled = load_config_json(RunLayout(run_dir).student_model).get("distilled") or {}
    members = [_relative(m, run_dir) for m in distilled.get("teacher_members", [])]
    return {
        "student": {"arch": stats["arch"], **{k: stats[k] for k in keys}},
        "teacher": {
            "arch": stats["teacher"]["arch"],
            **{k: stats["teacher"][k] for k in keys},
            "members": members,
            "view": distilled.get("teacher_view"),
        },
    }


def _relative(folder: str, run_dir: Path) -> str:
    """A teacher member's folder as the run directory names it (baseline/model, ...)."""
    path = Path(folder)
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else folder


def _recipe_differences(cfg: Config, run_dir: Path, simple_loss: str) -> list[str]:
    """What the DerMAE student (d) does differently from (b) besides the teacher and synthetics."""
    differences = []
    student_loss = chosen_loss(run_dir, cfg.distill.loss)
    if student_loss != simple_loss:
        differences.append(
            f"the student (d) was trained with {student_loss} but (b) with {simple_loss}: set "
            "distill.loss=baseline for a like-for-like comparison"
        )
    if cfg.distill.mixup > 0:
        differences.append(
            f"the student (d) mixes its batches (distill.mixup={cfg.distill.mixup}) and (b) "
            "does not: variant (g) is (b) with the same mixup and no teacher"
        )
    return differences


def ablate(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    run_dir = Path(run_dir)
    out = RunLayout(run_dir).ablate
    prepared = load_prepared(run_dir, with_synthetic=False)
    models, notes = _variant_models(cfg, run_dir, resume)
    results: dict[str, dict[str, Any]] = {}
    predictions: dict[str, pd.DataFrame] = {}
    for name, model_dir in models.items():
        results[name] = evaluate_model(
            model_dir, prepared, cfg.evaluate.split, out / "eval" / name, cfg.evaluate, cfg.seed
        )
        predictions[name] = pd.read_csv(out / "eval" / name / "predictions.csv")
    comparisons = paired_against_reference(
        predictions,
        prepared.malignant_index,
        cfg.evaluate.ece_bins,
        cfg.evaluate.bootstrap,
        cfg.seed,
    )
    seed_models = _seed_models(cfg, run_dir, models[REFERENCE], notes["simple_fix"]["loss"], resume)
    frames = {name: [frame] for name, frame in predictions.items()}
    seeds = None
    if seed_models:
        seed_frames, seeds = _seed_study(cfg, run_dir, seed_models, predictions, results)
        frames.update(seed_frames)
    reference = predictions[REFERENCE]
    components = component_effects(
        frames,
        paired_metric_fn(
            prepared.malignant_index, cfg.evaluate.ece_bins, np.unique(reference["target"])
        ),
        cfg.evaluate.bootstrap,
        cfg.seed,
    )
    # Every variant on every `evaluate.external` set too: does DerMAE transfer better?
    external = evaluate_external(
        cfg, run_dir, models, out / "external", internal={n: out / "eval" / n for n in models}
    )
    external_paired = (
        paired_on_external(cfg, out / "external", list(models), reference=REFERENCE)
        if external
        else {}
    )
    table = metrics_table(
        {LABELS[k]: r["scalars"] for k, r in results.items()},
        {LABELS[k]: r["ci95"] for k, r in results.items()},
        HEADLINE,
    )
    summary = {
        "split": cfg.evaluate.split,
        "student_arch": cfg.distill.model,
        "budget": dataclasses.asdict(cfg.distill.train),
        "checkpoint_rule": cfg.distill.train.select,
        "reference": REFERENCE,
        "models": {k: str(v) for k, v in models.items()},
        "notes": notes,
        "verdict": verdict(comparisons),
        "seeds": seeds,
        "seed_verdict": seed_verdict(seeds) if seeds else None,
        "results": {k: {"scalars": r["scalars"], "ci95": r["ci95"]} for k, r in results.items()},
        "paired_bootstrap": comparisons,
        "components": components,
        "external_paired_bootstrap": external_paired,
        "table": table,
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(ablation_markdown(summary))
    print((out / "ablation.md").read_text())
    return out / "ablation.json"
