"""Pipeline/CLI entries for the synthesis steps that are not training loops."""

from __future__ import annotations

from pathlib import Path

from dermae.classify.baseline import baseline_seed_dirs
from dermae.config import Config
from dermae.data.prepared import ACCEPTED_FILE, data_dir
from dermae.layout import RunLayout
from dermae.synth.quality import evaluate_synthetic
from dermae.synth.sample import sample_balanced


def sample_stage(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Balance the train split; a changed config (resume=False) regenerates from scratch."""
    # New images void the filter's verdicts: `dermae synth evaluate` writes them again.
    (data_dir(run_dir) / "synthetic" / ACCEPTED_FILE).unlink(missing_ok=True)
    sample_balanced(cfg, run_dir, overwrite=not resume)
    return data_dir(run_dir) / "synthetic" / "manifest.csv"


def quality_stage(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """FID/KID, class fidelity and near-copies, judged by the run's baseline classifier;
    with sample.filter=classifier, also which synthetic images later stages may use. The
    baseline's extra seeds (distill.baseline_seeds), where trained, judge independently."""
    seeds = baseline_seed_dirs(run_dir, cfg.distill.baseline_seeds)
    evaluate_synthetic(cfg, run_dir, independent=[d for d in seeds if (d / "config.json").exists()])
    return RunLayout(run_dir).synth / "synth_quality.json"
