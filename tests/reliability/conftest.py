"""Shared fixtures of the reliability suite: run the CLI in-process, a tiny generated dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from dermae.cli import main
from dermae.data.toy import write_toy_dataset


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        """stderr lines of the error itself (not progress or thread notes)."""
        return [line for line in self.err.splitlines() if line.startswith("dermae: error")]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`cli("data", "prepare", ...)`: exit code and output of `dermae ...`, run in-process.
    An uncaught exception would fail the test itself, so a returned code means no traceback."""

    def run(*argv: str | Path) -> CliResult:
        capsys.readouterr()  # drop earlier output
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse usage errors
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A HAM10000-layout set (labels.csv + images/): 7 classes, 3 lesions each, 40x30 px."""
    root = tmp_path / "ham"
    truth = write_toy_dataset(root, "ham10000", lesions_per_class=3, seed=2)
    return root, truth
