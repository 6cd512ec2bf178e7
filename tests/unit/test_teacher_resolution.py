"""A teacher at a higher resolution: the data cached again at its size, the student's view
at that size (one augmentation draw for both), the `cnn_teacher` stage, and evaluation."""

import json

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from dermae.classify.cnn_teacher import cnn_teacher_members, train_cnn_teacher
from dermae.classify.model import load_classifier
from dermae.config import (
    CnnTeacherConfig,
    Config,
    DataConfig,
    DistillConfig,
    EvalConfig,
    TrainConfig,
)
from dermae.data.cache import load_square
from dermae.data.errors import DataError
from dermae.data.prepared import load_prepared
from dermae.data.transforms import to_resolution
from dermae.distill.task import DistillTask
from dermae.distill.train import distill
from dermae.evaluate.run import evaluate_model
from tests.helpers.tiny_data import add_synthetic, make_prepared, torch_threads

CLASSES = ("bcc", "mel", "nv")


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def test_at_size_caches_the_same_rows_again_from_their_sources(tmp_path):
    make_prepared(tmp_path, n_per_class=4, size=16, classes=CLASSES, source_size=40)
    small = load_prepared(tmp_path)
    large = small.at_size(32, progress=False)
    assert large.image_size == 32 and large.arrays["real"].shape[1:] == (32, 32, 3)
    assert list(large.manifest["image_id"]) == list(small.manifest["image_id"])
    for _, row in large.manifest.iterrows():
        expected = load_square(row["path"], 32)[0]
        np.testing.assert_array_equal(large.arrays["real"][row["cache_index"]], expected)
    made = (tmp_path / "data" / "images_32px.npy").stat().st_mtime_ns
    small.at_size(32, progress=False)  # reused, not rebuilt
    assert (tmp_path / "data" / "images_32px.npy").stat().st_mtime_ns == made
    assert small.at_size(16) is small


def test_at_size_without_the_source_files_is_a_clear_error(tmp_path):
    make_prepared(tmp_path, n_per_class=2, size=16, classes=CLASSES)  # paths do not exist
    with pytest.raises(DataError, match=r"6 images .* could not be read again .* at 32 px"):
        load_prepared(tmp_path).at_size(32, progress=False)


def _flip_of(augmented: torch.Tensor, raw: torch.Tensor) -> tuple[bool, bool]:
    for h in (False, True):
        for v in (False, True):
            flipped = raw.flip(-1) if h else raw
            flipped = flipped.flip(-2) if v else flipped
            if torch.equal(flipped, augmented):
                return h, v
    raise AssertionError("no flip maps the raw image to the augmented one")


def test_the_teacher_view_is_the_students_augmentation_draw_at_its_own_size(tmp_path):
    make_prepared(tmp_path, n_per_class=4, size=16, classes=CLASSES, source_size=40)
    add_synthetic(tmp_path, n_per_class=1)
    prepared = load_prepared(tmp_path)
    rows = prepared.rows("train", include_synthetic=True)
    flips = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
    plain = prepared.dataset(rows, flips)
    paired = prepared.dataset(rows, flips, view_size=32)
    raw_small, raw_large = prepared.dataset(rows), prepared.dataset(rows, view_size=32)
    seen = set()
    for i in range(len(rows)):
        torch.manual_seed(i)
        expected = plain[i]["image"]
        torch.manual_seed(i)
        item = paired[i]
        torch.testing.assert_close(item["image"], expected, rtol=0, atol=0)  # same draws
        flip = _flip_of(item["image"], raw_small[i]["image"])
        if bool(item["synthetic"]):  # no larger image: the student's view, resized
            assert torch.equal(item["teacher_image"], to_resolution(item["image"][None], 32)[0])
        else:
            assert flip == _flip_of(item["teacher_image"], raw_large[i]["teacher_image"])
            seen.add(flip)
    assert len(seen) > 1  # the draws varied, and the larger view followed each of them


def tiny_config(run_dir, members: int = 1, **distill_changes) -> Config:
    train = TrainConfig(max_steps=3, batch_size=6, lr=3e-3, log_every=1, eval_every=3, seed=0)
    return Config(
        run_dir=str(run_dir),
        data=DataConfig(root=str(run_dir)),
        cnn_teacher=CnnTeacherConfig(
            members=members,
            model="test_efficientnet",
            loss="weighted_ce",
            image_size=32,
            train=train,
        ),
        distill=DistillConfig(
            model="test_efficientnet",
            teachers=("cnn_teacher",),
            latency_runs=2,
            train=train,
            **distill_changes,
        ),
        evaluate=EvalConfig(bootstrap=20),
    )


def test_cnn_teacher_members_at_twice_the_size_teach_a_student_at_the_data_size(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES, source_size=40)
    cfg = tiny_config(tmp_path, members=2)
    folder = train_cnn_teacher(cfg, tmp_path)
    record = json.loads((folder / "members.json").read_text())
    assert [m["seed"] for m in record["members"]] == [1, 2]
    assert record["image_size"] == 32 and record["loss"] == "weighted_ce"
    members = cnn_teacher_members(cfg, tmp_path)
    assert [load_classifier(m)[1]["image_size"] for m in members] == [32, 32]

    student_dir = distill(cfg, tmp_path)
    _, config = load_classifier(student_dir)
    assert config["image_size"] == 16  # the student stays at the data's size
    assert config["distilled"]["teacher_image_size"] == 32
    assert config["distilled"]["teacher_view"] == "its own resolution"
    _, ensemble = load_classifier(tmp_path / "teacher_ensemble" / "model")
    assert ensemble["image_size"] == 32 and ensemble["threshold"]["chosen_on"] == "val"

    # A 32-px model on the 16-px run data is scored on the same test rows cached at 32 px.
    prepared = load_prepared(tmp_path, with_synthetic=False)
    result = evaluate_model(members[0], prepared, "test", tmp_path / "eval", cfg.evaluate)
    assert result["n_images"] == len(prepared.rows("test"))


def test_a_missing_member_names_the_stage_to_run(tmp_path):
    make_prepared(tmp_path, n_per_class=2, size=16, classes=CLASSES)
    with pytest.raises(FileNotFoundError, match="run the pipeline's cnn_teacher stage"):
        cnn_teacher_members(tiny_config(tmp_path), tmp_path)
    with pytest.raises(ValueError, match="cnn_teacher.members is 0"):
        cnn_teacher_members(tiny_config(tmp_path, members=0), tmp_path)


class Recording(torch.nn.Module):
    """A teacher that keeps the images it was given."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.config, self.seen = teacher, teacher.config, []

    def forward(self, images):
        self.seen.append(images)
        return self.teacher(images)


def test_the_live_teacher_reads_the_larger_view_and_mixup_blends_both(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES, source_size=40)
    cfg = tiny_config(tmp_path)
    train_cnn_teacher(cfg, tmp_path)
    teacher = Recording(load_classifier(cnn_teacher_members(cfg, tmp_path)[0])[0])
    student = load_classifier(cnn_teacher_members(cfg, tmp_path)[0])[0]  # any 16-px classifier
    prepared = load_prepared(tmp_path)
    data = prepared.dataset(prepared.rows("train"), view_size=32)
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in data[0]}
    task = DistillTask(student, teacher, mixup=0.4).train()
    with torch.no_grad():
        task.teacher_logits(batch)
        assert torch.equal(teacher.seen[-1], batch["teacher_image"])
        torch.manual_seed(3)
        task(batch)
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    mixed = lam * batch["teacher_image"] + (1 - lam) * batch["teacher_image"].flip(0)
    torch.testing.assert_close(teacher.seen[-1], mixed)
