"""`dermae run`: every stage in order, in one run directory, skipping what is already done.

A stage is done when `<run_dir>/stages/<name>.json` holds the fingerprint of the config
sections it depends on (and of its upstream stages as they were actually made), and its
output files are still whole (sizes as recorded, safetensors headers readable). A stage
whose config changed runs again, and so does everything downstream. A stage interrupted
half-way resumes from its training checkpoint, but only if it was started with the same
fingerprint (and the loop checks the checkpoint's own fingerprint too).

The per-stage commands (`dermae train`, `dermae finetune`, ...) go through `run_stage`, the
same logic, so `dermae run` afterwards knows what they made. `dermae run` skips the stages
whose output nothing in the config reads (`dermae.needs`), and lists them in
`stages/skipped.json`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from dermae.config import Config, fingerprint_tree, save_config
from dermae.engine.checkpoint import CheckpointError, check_safetensors, collective_saves
from dermae.engine.distributed import release_process_group_at_exit
from dermae.engine.fingerprint import first_difference
from dermae.layout import RunLayout
from dermae.needs import unneeded_stages


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function" taking (cfg, run_dir, resume=...) -> Path
    sections: tuple[str, ...]  # config sections this stage reads
    after: tuple[str, ...]  # upstream stages
    description: str


# Training stages choose their thresholds on validation, so they depend on the target
# specificities, but not on the rest of `evaluate` (bootstrap size, external sets, ...).
THRESHOLDS = "evaluate.specificities"

STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare",
        "dermae.data.prepare:prepare_stage",
        ("data",),
        (),
        "ingest, split by lesion, cache images",
    ),
    Stage(
        "baseline",
        "dermae.classify.baseline:train_baseline",
        ("baseline", THRESHOLDS),
        ("prepare",),
        "plain classifier on real data",
    ),
    Stage(
        "baseline_seeds",
        "dermae.classify.baseline:train_baseline_seeds",
        ("baseline", "distill.baseline_seeds", THRESHOLDS),
        ("baseline",),
        "more seeds of the baseline, as teacher members",
    ),
    Stage(
        "cnn_teacher",
        "dermae.classify.cnn_teacher:train_cnn_teacher",
        ("cnn_teacher", THRESHOLDS),
        ("baseline",),  # loss 'baseline' is whatever (b) used
        "CNN teacher members at their own budget and resolution",
    ),
    Stage("vae", "dermae.synth.vae:train_vae", ("vae",), ("prepare",), "latent autoencoder"),
    Stage("ldm", "dermae.synth.ldm:train_ldm", ("ldm",), ("vae",), "class-conditioned UNet"),
    Stage(
        "sample",
        "dermae.synth.stages:sample_stage",
        ("sample",),
        ("ldm",),
        "synthesise minority classes",
    ),
    Stage(
        "synth_quality",
        "dermae.synth.stages:quality_stage",
        ("sample",),  # sample.filter decides which synthetic images later stages read
        ("sample", "baseline"),
        "FID/KID, fidelity, near-copies",
    ),
    Stage(
        "pretrain",
        "dermae.pretrain.train:pretrain",
        ("pretrain",),
        ("sample", "synth_quality"),  # reads only the synthetic images the filter accepted
        "MAE pre-training",
    ),
    Stage(
        "finetune",
        "dermae.classify.finetune:finetune",
        ("finetune", THRESHOLDS),
        ("pretrain",),
        "teacher fine-tuning",
    ),
    Stage(
        "distill",
        "dermae.distill.train:distill",
        ("distill", THRESHOLDS),
        # the baseline (and its extra seeds) may be members of the teacher ensemble
        ("finetune", "baseline", "baseline_seeds", "cnn_teacher"),
        "student distillation",
    ),
    Stage(
        "evaluate",
        "dermae.evaluate.run:evaluate_stage",
        ("evaluate",),
        ("baseline", "finetune", "distill"),
        "test-split metrics with CIs",
    ),
    Stage(
        "ablate",
        "dermae.evaluate.ablation:ablate",
        # pretrain and finetune: variants (e) and (f) train other teachers the same way
        ("baseline", "distill", "evaluate", "ablate", "pretrain", "finetune"),
        ("distill", "baseline", "baseline_seeds", "cnn_teacher"),
        "ablation against the plain baseline",
    ),
    Stage(
        "export",
        "dermae.deploy.stages:export_stage",
        ("export",),
        ("distill", "evaluate"),
        "ONNX + int8 export",
    ),
    Stage(
        "report",
        "dermae.evaluate.summary:build_report",
        (),
        ("evaluate", "ablate", "export", "synth_quality"),
        "report.html / report.md",
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# Stages whose training loop runs on every process under torchrun / accelerate launch; the
# others run on rank 0 while the rest wait.
STAGE_WAIT = timedelta(hours=12)
TRAINING_STAGES = frozenset(
    {
        "baseline",
        "baseline_seeds",
        "cnn_teacher",
        "vae",
        "ldm",
        "pretrain",
        "finetune",
        "distill",
        "ablate",
    }
)

# Stages made of many trainings, each of which resumes only a checkpoint whose own fingerprint
# (settings, data, model, upstream weights) still matches: they may resume after their inputs
# changed, so one more seed or variant in the ablation trains only what is new.
SELF_CHECKED_STAGES = frozenset({"ablate"})


def _distributed() -> PartialState | None:
    """Accelerate's process group when launched with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    # Ranks > 0 wait at a barrier while rank 0 runs a stage such as sampling, which can take
    # longer than torch's default 30-minute collective timeout.
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=STAGE_WAIT)
    release_process_group_at_exit()
    return state


def _call(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


# Upstream stages read only under a setting: (stage, setting, upstream). A VAE with a
# perceptual term measures in the baseline's features, so a new baseline makes it stale.
# (synth_quality also reads the baseline's extra seeds where they exist, as independent
# judges; they decide nothing later stages read, so more seeds do not redo MAE pre-training.)
READS_WHEN_SET: tuple[tuple[str, str, str], ...] = (("vae", "vae.perceptual_weight", "baseline"),)


def _after(tree: dict[str, Any], stage: Stage) -> tuple[str, ...]:
    extra = [up for name, key, up in READS_WHEN_SET if name == stage.name and _setting(tree, key)]
    return stage.after + tuple(extra)


def _payload(tree: dict[str, Any], stage: Stage, upstream: dict[str, str]) -> dict[str, Any]:
    return {
        "data": tree["data"],
        "seed": tree["seed"],
        "sections": {s: _section(tree, s) for s in stage.sections},
        "after": [upstream[u] for u in _after(tree, stage)],
    }


def _setting(tree: dict[str, Any], key: str) -> Any:
    """One setting, or None where the fingerprint tree left it out (LATER_KEYS at off)."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _section(tree: dict[str, Any], key: str) -> Any:
    """A config section, or one key of it ("evaluate.specificities")."""
    for part in key.split("."):
        tree = tree[part]
    return tree


def _hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fingerprints(cfg: Config) -> dict[str, str]:
    """Per-stage hash of (data + seed + own sections + upstream fingerprints), from the config."""
    tree = fingerprint_tree(cfg)
    result: dict[str, str] = {}
    for stage in STAGES:
        result[stage.name] = _hash(_payload(tree, stage, result))
    return result


def _stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage '{name}'; stages: {', '.join(STAGE_NAMES)}")


def _made_upstream(cfg: Config, marks: Path) -> dict[str, str]:
    """Each stage's fingerprint as made: its done mark's, else the config's.

    So a stage rerun by its own command with other settings makes everything downstream
    of it stale, even for a `dermae run` whose config did not change.
    """
    tree = fingerprint_tree(cfg)
    result: dict[str, str] = {}
    for stage in STAGES:
        done = _read(marks / f"{stage.name}.json")
        result[stage.name] = done["fingerprint"] if done else _hash(_payload(tree, stage, result))
    return result


def output_files(output: Path) -> dict[str, int]:
    """Sizes of the files a stage wrote: the output file, or those directly in its folder."""
    if output.is_file():
        return {output.name: output.stat().st_size}
    if not output.is_dir():
        return {}
    return {f.name: f.stat().st_size for f in sorted(output.iterdir()) if f.is_file()}


def _in_run(output: Path, run_dir: Path) -> str | None:
    """`output` relative to the run directory, or None when it lies outside it."""
    try:
        return output.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return None


def marked_output(record: dict[str, Any], run_dir: Path) -> Path:
    """A done stage's output. Marks keep it relative to the run directory, so a run moved
    or resumed from another working directory finds what it made; older marks held the
    path as written, relative to the directory the run was started from."""
    inside = record.get("output_in_run")
    return run_dir / inside if inside is not None else Path(record["output"])


def output_problem(record: dict[str, Any], run_dir: Path) -> str | None:
    """Why a done stage's outputs cannot be trusted (missing, resized, bad header), or None."""
    output = marked_output(record, run_dir)
    if not output.exists():
        return f"its output {output} is missing"
    folder = output if output.is_dir() else output.parent
    for name, size in record.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} when it was written"
        if path.suffix == ".safetensors":
            try:
                check_safetensors(path)
            except CheckpointError as err:
                return str(err)
    return None


def _downstream(names: set[str], cfg: Config) -> set[str]:
    out = set(names)
    tree = fingerprint_tree(cfg)
    for stage in STAGES:  # STAGES is topologically ordered
        if out & set(_after(tree, stage)):
            out.add(stage.name)
    return out


def _read(path: Path) -> dict[str, Any] | None:
    """A mark, or None when there is none (or it was cut short: the stage is then not done)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)  # atomic: a killed run never leaves half a mark


def run_stage(cfg: Config, name: str, resume: bool = True, force: bool = False) -> Path:
    """Run one stage unless it is done for this fingerprint; returns its output.

    `force` runs it again from scratch (`--from`, or a stage command's `--no-resume`).
    """
    stage = _stage(name)
    run_dir = Path(cfg.run_dir)
    marks = RunLayout(run_dir).stages
    marks.mkdir(parents=True, exist_ok=True)
    upstream = _made_upstream(cfg, marks)
    payload = _payload(fingerprint_tree(cfg), stage, upstream)
    fingerprint = _hash(payload)
    done = _read(marks / f"{name}.json")
    if done and not force:
        if done["fingerprint"] == fingerprint:
            problem = output_problem(done, run_dir)
            if problem is None:
                print(f"[dermae] {name}: done earlier, skipped")
                return marked_output(done, run_dir)
            print(f"[dermae] {name}: {problem}; running it again")
        else:
            why = first_difference(done.get("inputs"), payload) if done.get("inputs") else None
            print(f"[dermae] {name}: inputs changed ({why or 'older mark'}); running it again")
    began = _read(marks / f"{name}.started.json")
    same_start = began is not None and began["fingerprint"] == fingerprint
    can_resume = resume and not force and (same_start or name in SELF_CHECKED_STAGES)
    state = _distributed()
    main = state is None or state.is_main_process
    if state is not None:
        state.wait_for_everyone()  # every rank has read the marks before rank 0 rewrites them
    if main:
        _write(marks / f"{name}.started.json", {"fingerprint": fingerprint})
        print(f"[dermae] {name}: {stage.description}" + (" (resuming)" if can_resume else ""))
    t0 = time.time()
    output = run_dir / "none"
    if main or name in TRAINING_STAGES:
        with collective_saves() if state is not None else nullcontext():
            output = Path(_call(stage.target)(cfg, run_dir, resume=can_resume))
    seconds = time.time() - t0
    if main:
        record = {
            "fingerprint": fingerprint,
            "output": str(output),
            "output_in_run": _in_run(output, run_dir),
            "seconds": seconds,
            "files": output_files(output),
            "inputs": payload,
        }
        _write(marks / f"{name}.json", record)
        with (marks / "timings.jsonl").open("a") as f:
            f.write(json.dumps({"stage": name, "seconds": round(seconds, 1)}) + "\n")
        print(f"[dermae] {name}: finished in {seconds:.0f} s")
    if state is not None:
        state.wait_for_everyone()  # rank 0 has saved what the next stage will read
    if not main:
        return marked_output(_read(marks / f"{name}.json") or {"output": str(output)}, run_dir)
    return output


def run_command(cfg: Config, target: str, resume: bool = True) -> Path:
    """A stage command (`dermae train`, ...): `run_stage` for the stage whose target it is;
    `--no-resume` (resume=False) runs it again from scratch even when it is done."""
    name = next((s.name for s in STAGES if s.target == target), None)
    if name is None:
        return _call(target)(cfg, cfg.run_dir, resume=resume)
    return run_stage(cfg, name, resume=resume, force=not resume)


def run_pipeline(
    cfg: Config,
    from_stage: str | None = None,
    until_stage: str | None = None,
    resume: bool = True,
) -> Path:
    """Run all stages; returns the run directory."""
    for name in (from_stage, until_stage):
        if name is not None and name not in STAGE_NAMES:
            raise ValueError(f"unknown stage '{name}'; stages: {', '.join(STAGE_NAMES)}")
    run_dir = Path(cfg.run_dir)
    marks = RunLayout(run_dir).stages
    marks.mkdir(parents=True, exist_ok=True)
    unneeded = unneeded_stages(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        save_config(cfg, run_dir / "config.yaml")
        _write(marks / "skipped.json", unneeded)
    forced = _downstream({from_stage}, cfg) if from_stage else set()
    started_all = time.time()
    for stage in STAGES:
        if stage.name in unneeded:
            print(f"[dermae] {stage.name}: not needed, skipped ({unneeded[stage.name]})")
        else:
            run_stage(cfg, stage.name, resume=resume, force=stage.name in forced)
        if stage.name == until_stage:
            break
    print(f"[dermae] pipeline finished in {time.time() - started_all:.0f} s; see {run_dir}")
    return run_dir
