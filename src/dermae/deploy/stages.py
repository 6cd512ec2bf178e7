"""Pipeline/CLI entries for export."""

from __future__ import annotations

from pathlib import Path

from dermae.config import Config
from dermae.deploy.export import export_run


def _metrics_for(run_dir: Path, model_dir: Path) -> Path | None:
    """The test metrics of this model written by the evaluate stage, for the model card."""
    candidate = run_dir / "evaluate" / model_dir.parent.name / "metrics.json"
    return candidate if candidate.exists() else None


def export_stage(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Export the run's student to `<run_dir>/export`."""
    model_dir = Path(run_dir) / "student" / "model"
    return export_run(
        cfg, model_dir, Path(run_dir) / "export", _metrics_for(Path(run_dir), model_dir)
    )


def export_command(cfg: Config, model_dir: Path | None = None, out_dir: Path | None = None) -> Path:
    """`dermae export`: the run's student by default, or any classifier folder."""
    run_dir = Path(cfg.run_dir)
    model_dir = Path(model_dir or run_dir / "student" / "model")
    return export_run(
        cfg, model_dir, out_dir or run_dir / "export", _metrics_for(run_dir, model_dir)
    )
