"""`dermae run`: every stage in order, in one run directory, skipping what is already done.

A stage is done when `<run_dir>/stages/<name>.json` holds the fingerprint of the config
sections it depends on (and of its upstream stages). A stage whose config changed runs
again, and so does everything downstream. A stage interrupted half-way resumes from its
training checkpoint, but only if it was started with the same fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermae.config import Config, save_config, to_dict


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function" taking (cfg, run_dir, resume=...) -> Path
    sections: tuple[str, ...]  # config sections this stage reads
    after: tuple[str, ...]  # upstream stages
    description: str


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
        ("baseline", "evaluate"),
        ("prepare",),
        "plain classifier on real data",
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
        ("finetune", "evaluate"),
        ("pretrain",),
        "teacher fine-tuning",
    ),
    Stage(
        "distill",
        "dermae.distill.train:distill",
        ("distill", "evaluate"),
        ("finetune", "baseline"),  # the baseline may be a member of the teacher ensemble
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
        ("distill", "baseline"),
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


def _call(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def fingerprints(cfg: Config) -> dict[str, str]:
    """Per-stage hash of (data + seed + own sections + upstream fingerprints)."""
    tree = to_dict(cfg)
    result: dict[str, str] = {}
    for stage in STAGES:
        payload = {
            "data": tree["data"],
            "seed": tree["seed"],
            "sections": {s: tree[s] for s in stage.sections},
            "after": [result[u] for u in stage.after],
        }
        result[stage.name] = hashlib.sha256(
            json.dumps(payload, sort_keys=True).encode()
        ).hexdigest()[:16]
    return result


def _downstream(names: set[str]) -> set[str]:
    out = set(names)
    for stage in STAGES:  # STAGES is topologically ordered
        if out & set(stage.after):
            out.add(stage.name)
    return out


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


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
    marks = run_dir / "stages"
    marks.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    prints = fingerprints(cfg)
    forced = _downstream({from_stage}) if from_stage else set()
    log = run_dir / "stages" / "timings.jsonl"
    started_all = time.time()
    for stage in STAGES:
        done = _read(marks / f"{stage.name}.json")
        if stage.name not in forced and done and done["fingerprint"] == prints[stage.name]:
            print(f"[dermae] {stage.name}: done earlier, skipped")
        else:
            began = _read(marks / f"{stage.name}.started.json")
            same_start = began is not None and began["fingerprint"] == prints[stage.name]
            can_resume = resume and stage.name not in forced and same_start
            (marks / f"{stage.name}.started.json").write_text(
                json.dumps({"fingerprint": prints[stage.name]})
            )
            print(
                f"[dermae] {stage.name}: {stage.description}"
                + (" (resuming)" if can_resume and same_start else "")
            )
            t0 = time.time()
            output = _call(stage.target)(cfg, run_dir, resume=can_resume)
            seconds = time.time() - t0
            record = {"fingerprint": prints[stage.name], "output": str(output), "seconds": seconds}
            (marks / f"{stage.name}.json").write_text(json.dumps(record, indent=2))
            with log.open("a") as f:
                f.write(json.dumps({"stage": stage.name, "seconds": round(seconds, 1)}) + "\n")
            print(f"[dermae] {stage.name}: finished in {seconds:.0f} s")
        if stage.name == until_stage:
            break
    print(f"[dermae] pipeline finished in {time.time() - started_all:.0f} s; see {run_dir}")
    return run_dir
