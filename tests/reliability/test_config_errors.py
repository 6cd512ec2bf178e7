"""Bad configs end in one line naming the file or key, with exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dermae.config import ConfigError, load_config


def _one_line_error(result) -> str:
    assert result.code == 2
    assert len(result.error_lines) == 1, result.err
    line = result.error_lines[0]
    assert line.startswith("dermae: error: ")
    return line


def test_malformed_yaml_names_the_file_and_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: runs/x\nbaseline:\n  model: [resnet18\n")
    line = _one_line_error(cli("train", "--run-dir", tmp_path / "run", "-c", bad))
    assert str(bad) in line and "not valid YAML" in line and "line 4" in line


def test_config_path_that_is_a_folder(cli, tmp_path: Path) -> None:
    line = _one_line_error(cli("train", "--run-dir", tmp_path / "run", "-c", tmp_path))
    assert f"config path {tmp_path} is a folder" in line


def test_binary_config_file(cli, tmp_path: Path) -> None:
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    line = _one_line_error(cli("train", "--run-dir", tmp_path / "run", "-c", binary))
    assert f"cannot read config file {binary}" in line


def test_unparsable_override_value(cli, tmp_path: Path) -> None:
    line = _one_line_error(cli("train", "--run-dir", tmp_path / "run", "--set", "x=[1"))
    assert "override 'x=[1'" in line and "not valid YAML" in line


@pytest.mark.parametrize(
    ("overrides", "named", "why"),
    [
        (["baseline.train.batch_size=0"], "'baseline.train.batch_size'", "1 or more, got 0"),
        (["distill.train.batch_size=-4"], "'distill.train.batch_size'", "1 or more, got -4"),
        (
            ["baseline.train.max_steps=-1", "baseline.train.epochs=0"],
            "'baseline.train.max_steps'",
            "must not be negative, got -1",
        ),
        (
            ["vae.train.max_steps=0", "vae.train.epochs=0"],
            "'vae.train.epochs' and 'vae.train.max_steps' are both 0",
            "would not train",
        ),
        (["data.image_size=0"], "'data.image_size'", "1 or more"),
        (["data.val_frac=1.5"], "'data.val_frac'", "between 0 and 1"),
        (["baseline.train.lr=.nan"], "'baseline.train.lr'", "finite number"),
        (["evaluate.specificities=[0.9, 1.2]"], "'evaluate.specificities[1]'", "between 0 and 1"),
        (["vae.block_out_channels=[32, 0]"], "'vae.block_out_channels[1]'", "1 or more"),
        (["sample.steps=0"], "'sample.steps'", "1 or more"),
        (["ldm.block_out_channels=[]"], "'ldm.block_out_channels'", "at least one width"),
        (["data.group_missing_lesions=drop"], "'data.group_missing_lesions'", "error or image"),
    ],
)
def test_impossible_values_are_named(cli, tmp_path: Path, overrides, named, why) -> None:
    args = ["train", "--run-dir", tmp_path / "run"]  # never the default runs/demo
    for item in overrides:
        args += ["--set", item]
    line = _one_line_error(cli(*args))
    assert named in line and why in line


def test_unknown_model_names_are_named(cli, tmp_path: Path) -> None:
    line = _one_line_error(
        cli("train", "--run-dir", tmp_path / "run", "--set", "baseline.model=resnet1800")
    )
    assert "'baseline.model'" in line and "'resnet1800' is not a timm model" in line
    assert "did you mean" in line  # close timm names are suggested
    line = _one_line_error(
        cli("distill", "--run-dir", tmp_path / "run", "--set", "distill.model=no_such_net")
    )
    assert "'distill.model'" in line and "no_such_net" in line
    line = _one_line_error(
        cli("pretrain", "--run-dir", tmp_path / "run", "--set", "pretrain.model=vit_nonexistent")
    )
    assert "'pretrain.model'" in line and "unknown ViT 'vit_nonexistent'" in line
    line = _one_line_error(
        cli("finetune", "--run-dir", tmp_path / "run", "--set", "finetune.model=resnet18")
    )
    assert "'finetune.model'" in line


def test_valid_names_and_edge_values_still_load() -> None:
    cfg = load_config(
        None,
        [
            "baseline.model=resnet18.a1_in1k",  # a timm name with a pretrained tag
            "pretrain.model=vit_micro_patch4",  # dermae's own ViT registry
            "finetune.model=vit_small_patch16_224",  # a plain timm ViT
            "baseline.train.epochs=0",
            "baseline.train.max_steps=5",  # max_steps alone is enough
            "data.limit=0",
            "ldm.label_dropout=0.0",
        ],
    )
    assert cfg.baseline.train.max_steps == 5 and cfg.pretrain.model == "vit_micro_patch4"


def test_validation_runs_on_yaml_too(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  eval_batch_size: 0\n")
    with pytest.raises(ConfigError, match="'finetune.eval_batch_size' must be 1 or more"):
        load_config(path)


def test_a_real_process_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """The installed entry point, end to end: exit status 2 and a single stderr line."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {image_size: 64\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dermae.cli", "data", "prepare", "-c", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "not valid YAML" in lines[0]
