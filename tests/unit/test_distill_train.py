import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dermae.classify.model import (
    build_classifier,
    classifier_config,
    load_classifier,
    save_classifier,
)
from dermae.config import Config, DataConfig, DistillConfig, TrainConfig
from dermae.data.prepared import load_prepared
from dermae.distill.train import STATS_FILE, distill, student_stats
from dermae.engine.checkpoint import MODEL_FILE
from tests.helpers.tiny_data import add_synthetic, make_prepared, torch_threads

CLASSES = ("bcc", "mel", "nv")


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def tiny_config(run_dir, **distill_changes) -> Config:
    train = TrainConfig(max_steps=4, batch_size=6, lr=3e-3, log_every=1, eval_every=2, seed=0)
    fields = {"model": "test_efficientnet", "latency_runs": 3, "train": train, **distill_changes}
    return Config(
        run_dir=str(run_dir),
        data=DataConfig(root=str(run_dir), include_synthetic=True),
        distill=DistillConfig(**fields),
    )


def save_teacher(directory, size: int, classes=CLASSES):
    torch.manual_seed(7)
    config = classifier_config("test_vit", classes, ["bcc", "mel"], size, mean=(0.5,) * 3)
    return save_classifier(directory, build_classifier(config))


def test_student_stats_match_a_hand_count():
    size = 8
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    stats = student_stats(model, size, latency_runs=3)
    assert stats["parameters"] == (3 * 4 + 4) + (4 * 2 + 2)
    # 2 FLOPs per multiply-add: 1x1 conv at every pixel, then the linear layer.
    assert stats["flops_per_image"] == 2 * 3 * 4 * size * size + 2 * 4 * 2
    assert stats["size_bytes"] > 26 * 4  # fp32 weights + safetensors header
    assert stats["latency_ms_cpu_batch1"] > 0 and stats["latency_runs"] == 3


def test_distill_end_to_end_writes_a_student_and_honest_stats(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES)
    add_synthetic(tmp_path, n_per_class=2)
    save_teacher(tmp_path / "teacher" / "model", 16)  # where `dermae finetune` puts it
    model_dir = distill(tiny_config(tmp_path), tmp_path)
    n_real = len(load_prepared(tmp_path).rows("train"))

    assert model_dir == tmp_path / "student" / "model"
    student, config = load_classifier(model_dir)
    assert config["arch"] == "test_efficientnet" and config["class_names"] == list(CLASSES)
    assert config["threshold"]["chosen_on"] == "val"
    assert set(config["thresholds"]) == {"spec@0.90", "spec@0.95"}
    assert config["train_rows"] == {"real": n_real, "synthetic": 6}
    assert config["distilled"]["teacher"] == str(tmp_path / "teacher" / "model")

    stats = json.loads((tmp_path / "student" / STATS_FILE).read_text())
    assert stats["parameters"] == sum(p.numel() for p in student.parameters())
    assert stats["size_bytes"] == (model_dir / MODEL_FILE).stat().st_size
    assert stats["flops_per_image"] == student_stats(student, 16, latency_runs=1)["flops_per_image"]
    assert stats["flops_per_image"] > 2 * stats["parameters"] > 0  # convs reuse weights per pixel
    assert stats["image_size"] == 16 and stats["latency_ms_cpu_batch1"] > 0
    teacher, _ = load_classifier(tmp_path / "teacher" / "model")
    assert stats["teacher"]["parameters"] == sum(p.numel() for p in teacher.parameters())
    assert stats["steps"] == 4

    log = [json.loads(line) for line in (tmp_path / "student/train/metrics.jsonl").open()]
    assert [r["step"] for r in log if "val_balanced_accuracy" in r] == [2, 4]
    assert all(
        0.0 <= r["val_balanced_accuracy"] <= 1.0 for r in log if "val_balanced_accuracy" in r
    )


def test_distill_with_relational_kd_logs_every_loss_term(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES)
    save_teacher(tmp_path / "teacher" / "model", 16)
    distill(tiny_config(tmp_path, relation_weight=2.0), tmp_path)
    log = [json.loads(line) for line in (tmp_path / "student/train/metrics.jsonl").open()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 4
    for r in steps:  # loss = (1 - alpha) ce + alpha kd + 2 relation, per step (log_every 1)
        alpha = DistillConfig().alpha
        expected = (1 - alpha) * r["ce"] + alpha * r["kd"] + 2.0 * r["relation"]
        assert r["loss"] == pytest.approx(expected, rel=1e-4)
        assert 0.0 < r["relation"] < 4.0  # squared differences of cosines


def test_distill_with_cached_logits_and_a_teacher_at_another_resolution(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES)
    add_synthetic(tmp_path, n_per_class=2)
    save_teacher(tmp_path / "big_teacher" / "model", 32)
    train = TrainConfig(max_steps=4, batch_size=6, lr=3e-3, log_every=1, eval_every=2, seed=5)
    cfg = tiny_config(tmp_path, cache_teacher_logits=True, alpha=1.0, train=train)
    # A stage folder holding model/ is accepted as teacher_dir too.
    model_dir = distill(
        cfg, tmp_path, teacher_dir=tmp_path / "big_teacher", stage="abl", include_synthetic=False
    )
    n_real = len(load_prepared(tmp_path).rows("train"))
    assert model_dir == tmp_path / "abl" / "model"
    _, config = load_classifier(model_dir)
    assert config["image_size"] == 16
    assert config["distilled"]["teacher_image_size"] == 32
    # No source files to cache the data at 32 px: the teacher's input is resized, and says so.
    assert config["distilled"]["teacher_view"] == "the student's images, resized up"
    assert config["distilled"]["cache_teacher_logits"] is True
    assert config["train_rows"] == {"real": n_real, "synthetic": 0}
    assert config["train_seed"] == 5  # the stage's own seed, not the run's (cfg.seed is 0)
    stats = json.loads((tmp_path / "abl" / STATS_FILE).read_text())
    assert stats["teacher"]["image_size"] == 32 and stats["teacher_cache_seconds"] > 0

    # Run again: the loop resumes at its last step, so the student comes out unchanged.
    first = load_file(str(model_dir / MODEL_FILE))
    distill(
        cfg,
        tmp_path,
        teacher_dir=tmp_path / "big_teacher",
        stage="abl",
        include_synthetic=False,
        resume=True,
    )
    again = load_file(str(model_dir / MODEL_FILE))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_teacher_with_other_classes_is_refused(tmp_path):
    make_prepared(tmp_path, n_per_class=4, size=16, classes=CLASSES)
    save_teacher(tmp_path / "teacher" / "model", 16, classes=("benign", "malignant", "other"))
    with pytest.raises(ValueError, match="teacher"):
        distill(tiny_config(tmp_path), tmp_path)
    with pytest.raises(FileNotFoundError, match="finetune"):
        distill(tiny_config(tmp_path), tmp_path, teacher_dir=tmp_path / "nowhere")


@pytest.mark.parametrize(
    "arch",
    ["efficientnet_b0", "mobilenetv3_large_100", "mobilenetv3_small_100", "vit_tiny_patch16_224"],
)
def test_supported_students_build_at_the_working_resolution(arch):
    student = build_classifier(classifier_config(arch, CLASSES, ["bcc", "mel"], 32))
    assert student(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    stats = student_stats(student, 32, latency_runs=1, warmup=0)
    assert stats["parameters"] == sum(p.numel() for p in student.net.parameters())
    assert stats["size_bytes"] >= 4 * stats["parameters"]  # fp32 weights plus a header
    assert stats["flops_per_image"] > 0


def test_a_retrained_teacher_is_never_resumed_onto(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES)
    save_teacher(tmp_path / "teacher" / "model", 16)
    cfg = tiny_config(tmp_path)
    first = load_file(str(distill(cfg, tmp_path) / MODEL_FILE))
    again = load_file(str(distill(cfg, tmp_path, resume=True) / MODEL_FILE))
    assert all(torch.equal(first[k], again[k]) for k in first)  # same teacher: resumed, done
    torch.manual_seed(99)  # another teacher in the same folder
    config = classifier_config("test_vit", CLASSES, ["bcc", "mel"], 16, mean=(0.5,) * 3)
    save_classifier(tmp_path / "teacher" / "model", build_classifier(config))
    retrained = load_file(str(distill(cfg, tmp_path, resume=True) / MODEL_FILE))
    assert not all(torch.equal(first[k], retrained[k]) for k in first)
