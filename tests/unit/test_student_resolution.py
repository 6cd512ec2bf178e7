"""A student at its own resolution (`distill.image_size`): trained, scored and exported at it,
taught by a teacher at the data's size that sees the student's view resized down."""

import json

import pytest
import torch

from dermae.classify.baseline import train_baseline
from dermae.classify.model import load_classifier
from dermae.config import ConfigError, load_config
from dermae.data.prepared import load_prepared
from dermae.data.transforms import to_resolution
from dermae.deploy.export import export_run
from dermae.distill.task import DistillTask
from dermae.distill.train import distill
from dermae.evaluate.run import evaluate_model
from tests.helpers.tiny_data import make_prepared, torch_threads
from tests.unit.test_teacher_resolution import Recording

CLASSES = ("bcc", "mel", "nv")
TINY = [
    "data.image_size=16",
    "data.include_synthetic=false",
    "baseline.model=test_efficientnet",
    "baseline.loss=weighted_ce",
    "distill.model=test_efficientnet",
    "distill.teachers=[baseline]",
    "distill.latency_runs=2",
    "evaluate.bootstrap=20",
]
TRAIN = ["max_steps=3", "batch_size=6", "lr=0.003", "log_every=1", "eval_every=3", "seed=0"]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def tiny_config(run_dir, *changes: str):
    steps = [f"{stage}.train.{t}" for stage in ("baseline", "distill") for t in TRAIN]
    return load_config(
        None, [f"run_dir={run_dir}", f"data.root={run_dir}", *TINY, *steps, *changes]
    )


def test_a_student_at_another_size_than_the_synthetic_images_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"distill.image_size' is 32.*synthetic_ratio=0"):
        load_config(None, [f"run_dir={tmp_path}", "data.image_size=16", "distill.image_size=32"])
    # Without synthetic rows in the student's set it is fine, and the data's own size is too.
    load_config(None, ["data.image_size=16", "distill.image_size=32", "distill.synthetic_ratio=0"])
    load_config(None, ["data.image_size=16", "distill.image_size=16"])


def test_a_student_at_twice_the_data_size_trains_scores_and_exports_there(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES, source_size=40)
    cfg = tiny_config(tmp_path, "distill.image_size=32", "export.int8=false")
    train_baseline(cfg, tmp_path)
    student_dir = distill(cfg, tmp_path)
    _, config = load_classifier(student_dir)
    assert config["image_size"] == 32
    assert config["distilled"]["teacher_image_size"] == 16
    assert config["distilled"]["teacher_view"] == "the student's images, resized down"
    # The training log records the size, so a checkpoint at the data's size is not resumed.
    run = json.loads((tmp_path / "student/train/checkpoint/config.json").read_text())
    assert run["image_size"] == 32

    prepared = load_prepared(tmp_path, with_synthetic=False)
    result = evaluate_model(student_dir, prepared, "test", tmp_path / "eval", cfg.evaluate)
    assert result["n_images"] == len(prepared.rows("test"))
    out = export_run(cfg, student_dir)
    assert json.loads((out / "preprocess.json").read_text())["image_size"] == 32


def test_the_teacher_at_the_data_size_sees_the_students_view_resized_down(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES, source_size=40)
    cfg = tiny_config(tmp_path)
    teacher = Recording(load_classifier(train_baseline(cfg, tmp_path))[0])
    student = load_classifier(distill(tiny_config(tmp_path, "distill.image_size=32"), tmp_path))[0]
    data = load_prepared(tmp_path).at_size(32, progress=False)
    rows = data.dataset(data.rows("train"))
    batch = {k: torch.stack([rows[i][k] for i in range(4)]) for k in ("image", "label")}
    with torch.no_grad():
        DistillTask(student, teacher).teacher_logits(batch)
    assert teacher.seen[-1].shape[-1] == 16
    torch.testing.assert_close(teacher.seen[-1], to_resolution(batch["image"], 16))
