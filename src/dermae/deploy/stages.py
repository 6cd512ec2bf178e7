"""Pipeline/CLI entries for export: the live ones (`dermae run`'s export stage, `dermae export`)."""

from __future__ import annotations

import json
from pathlib import Path

from dermae.config import Config
from dermae.deploy.export import REPORT_FILE, export_run
from dermae.layout import RunLayout


def _metrics_for(run_dir: Path, model_dir: Path) -> Path | None:
    """The test metrics of this model, for the model card: the evaluate stage's, else
    those of `dermae evaluate`."""
    name = model_dir.parent.name
    evaluated = RunLayout(run_dir).evaluate
    for candidate in (
        evaluated / name / "metrics.json",
        evaluated / f"{name}-test" / "metrics.json",
    ):
        if candidate.exists():
            return candidate
    return None


def export_stage(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Export the run's student to `<run_dir>/export`."""
    layout = RunLayout(run_dir)
    model_dir = layout.student_model
    return export_run(cfg, model_dir, layout.export, _metrics_for(layout.root, model_dir))


def export_command(cfg: Config, model_dir: Path | None = None, out_dir: Path | None = None) -> Path:
    """`dermae export`: the run's student by default, or any classifier folder."""
    run_dir = Path(cfg.run_dir)
    model_dir = Path(model_dir or RunLayout(run_dir).student_model)
    out = export_run(
        cfg, model_dir, out_dir or RunLayout(run_dir).export, _metrics_for(run_dir, model_dir)
    )
    report = json.loads((out / REPORT_FILE).read_text())
    print(f"exported {model_dir} -> {out}")
    print(f"  ONNX vs PyTorch max |diff| of probabilities: {report['parity']['max_abs_diff']:.2e}")
    quant = out / "quantization_report.json"
    if quant.exists():
        q = json.loads(quant.read_text())
        print(f"  int8 variant: {q.get('chosen')}, recommended model: {q.get('recommended')}")
    return out
