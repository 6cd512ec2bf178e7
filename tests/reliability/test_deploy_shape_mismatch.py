"""A model meets data of another size whose sources are gone: refused, naming both sizes
(never silent metrics on resized images). With the sources there, the images are cached
again at the model's size (tests/unit/test_teacher_resolution.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from tests.helpers.tiny_data import DEFAULT_CLASSES, make_prepared, torch_threads


def test_evaluating_a_32px_model_on_16px_data_is_refused(cli, tmp_path: Path):
    run = tmp_path / "run"
    make_prepared(run, size=16)
    with torch_threads(1):
        torch.manual_seed(0)
        config = classifier_config("test_efficientnet", list(DEFAULT_CLASSES), ["mel"], 32)
        model = save_classifier(tmp_path / "model32", build_classifier(config))
    result = cli("evaluate", "--run-dir", run, "--model", model)
    assert result.code == 2
    line = result.error_lines[-1]
    assert line.startswith(
        f"dermae: error: {model} is a 32-px model but {run / 'data'} holds 16-px images, and "
        "their sources cannot be cached again at 32 px ("
    )
    assert line.endswith(
        "evaluate it on data prepared at 32 px (--set data.image_size=32 with another --run-dir)"
    )
    assert not (run / "evaluate").exists() or not any((run / "evaluate").rglob("metrics.json"))
