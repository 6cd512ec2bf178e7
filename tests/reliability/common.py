"""Helpers of the reliability suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd


def prepare_args(root: Path, run_dir: Path, *sets: str) -> list[str]:
    """`dermae data prepare` on `root` at 16 px, with extra `--set` overrides."""
    args = ["data", "prepare", "--run-dir", str(run_dir), "--set", f"data.root={root}"]
    args += ["--set", "data.image_size=16"]
    for item in sets:
        args += ["--set", item]
    return args


def rewrite_labels(root: Path, edit: Callable[[pd.DataFrame], None]) -> None:
    """Edit labels.csv as text columns (blank cells stay blank)."""
    csv = root / "labels.csv"
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    edit(table)
    table.to_csv(csv, index=False)
