"""Slim an older run folder: drop the optimizer state of trainings that have finished.

Every training keeps `checkpoint/training_state/optimizer.pt` so a killed run resumes
exactly. Once a training has reached its last step that file (AdamW: twice the model) is
never read again: `fit` reuses a finished checkpoint from its weights, EMA and best
weights alone, and since the `finished` mark exists its last checkpoint leaves the file
out. Folders written before that still hold it; this removes it. Unfinished trainings are
left whole, so they still resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dermae.engine.checkpoint import (
    CONFIG_FILE,
    OPTIMIZER_FILE,
    STATE_DIR,
    STATE_FILE,
    CheckpointError,
    read_progress,
)


@dataclass
class PruneReport:
    """What `prune_run` freed (or would free, on a dry run) and what it left alone."""

    pruned: list[tuple[Path, int]] = field(default_factory=list)  # (checkpoint, bytes)
    unfinished: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    already_slim: int = 0

    @property
    def freed_bytes(self) -> int:
        return sum(size for _, size in self.pruned)


def _max_steps(checkpoint: Path) -> int:
    """The step budget in the checkpoint's own config (0: counted in epochs, unknown here)."""
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    return int((config.get("train") or {}).get("max_steps") or 0)


def is_finished(checkpoint: Path) -> bool:
    """True when the training saved in `checkpoint` has taken its last step.

    Checkpoints written before the `finished` mark existed count as finished when their
    step equals the config's `max_steps`; an epoch budget without the mark stays unknown,
    hence unfinished.
    """
    progress = read_progress(checkpoint)
    if "finished" in progress:
        return bool(progress["finished"])
    budget = _max_steps(checkpoint)
    return budget > 0 and int(progress.get("step", -1)) >= budget


def _mark_finished(checkpoint: Path) -> None:
    path = checkpoint / STATE_DIR / STATE_FILE
    meta = json.loads(path.read_text())
    meta["progress"]["finished"] = True
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(path)  # atomic: a killed prune never leaves a half-written state.json


def prune_run(run_dir: str | Path, dry_run: bool = False) -> PruneReport:
    """Delete `optimizer.pt` of every finished training under `run_dir`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder: pass the run_dir of a config")
    report = PruneReport()
    for state_dir in sorted(run_dir.rglob(STATE_DIR)):
        checkpoint = state_dir.parent
        saving = any(".tmp" in part for part in checkpoint.relative_to(run_dir).parts)
        if saving or not state_dir.is_dir():
            continue  # a save in progress (or a killed one's leftover): not ours to touch
        optimizer = state_dir / OPTIMIZER_FILE
        try:
            finished = is_finished(checkpoint)
        except (CheckpointError, OSError, ValueError) as err:
            report.unreadable.append((checkpoint, str(err)))
            continue
        if not finished:
            report.unfinished.append(checkpoint)
        elif not optimizer.exists():
            report.already_slim += 1
        else:
            report.pruned.append((checkpoint, optimizer.stat().st_size))
            if not dry_run:
                _mark_finished(checkpoint)  # first, so the folder always resumes
                optimizer.unlink()
    return report


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


def format_report(report: PruneReport, run_dir: Path, dry_run: bool) -> str:
    """The lines `dermae prune` prints: what went, what stayed, and why."""
    verb = "would free" if dry_run else "freed"
    lines = [
        f"{run_dir}: {len(report.pruned)} finished training(s), {verb} "
        f"{_megabytes(report.freed_bytes)} of optimizer state"
    ]
    for checkpoint, size in report.pruned:
        lines.append(f"  {checkpoint.relative_to(run_dir)}  {_megabytes(size)}")
    if report.already_slim:
        lines.append(f"{report.already_slim} finished training(s) already pruned")
    if report.unfinished:
        lines.append(f"{len(report.unfinished)} unfinished training(s) kept whole (they resume):")
        lines += [f"  {path.relative_to(run_dir)}" for path in report.unfinished]
    if report.unreadable:
        lines.append(f"{len(report.unreadable)} checkpoint(s) skipped, unreadable:")
        lines += [f"  {path}: {why}" for path, why in report.unreadable]
    return "\n".join(lines)


def prune_command(run_dir: Path, dry_run: bool = False) -> int:
    """`dermae prune`: prune and print the report; exit 1 when a checkpoint was unreadable."""
    report = prune_run(run_dir, dry_run=dry_run)
    print(format_report(report, Path(run_dir), dry_run))
    return 1 if report.unreadable else 0
