import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from dermae.classify.model import Classifier, build_classifier, classifier_config, load_classifier
from dermae.config import ConfigError, fingerprint_tree, load_config
from dermae.data.prepared import load_prepared
from dermae.data.transforms import train_augment
from dermae.distill.task import DistillTask
from dermae.distill.train import STATS_FILE, distill
from dermae.distill.views import TeacherViews, build_teacher_views
from dermae.engine.checkpoint import MODEL_FILE
from tests.helpers.tiny_data import make_prepared, torch_threads
from tests.unit.test_distill_train import CLASSES, save_teacher, tiny_config


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def tiny(arch: str, size: int, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_classifier(classifier_config(arch, CLASSES, ["bcc", "mel"], size))


def augmented_train_set(tmp_path, view_size=None):
    prepared = load_prepared(tmp_path)
    return prepared.dataset(prepared.rows("train"), train_augment(), view_size=view_size)


def test_views_are_augmented_draws_labelled_by_the_teacher_and_reproducible(tmp_path):
    make_prepared(tmp_path, n_per_class=6, size=16, classes=CLASSES)
    train_set = augmented_train_set(tmp_path)
    teacher = tiny("test_efficientnet", 16, seed=1).eval()
    rng_before = torch.get_rng_state()
    views = build_teacher_views(teacher, train_set, views=3, seed=4, batch_size=5)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training RNG is left alone
    n = len(train_set)
    assert views.images.shape == (3, n, 3, 16, 16) and views.images.dtype == torch.uint8
    assert views.logits.shape == (3, n, 3)
    # Each view is a different augmentation of the same rows...
    assert not torch.equal(views.images[0], views.images[1])
    # ...labelled by the teacher on exactly that view.
    with torch.no_grad():
        live = teacher(views.images[2].float() / 255.0)
    assert torch.allclose(views.logits[2], live, atol=1e-5)
    # The same seed draws the same views (a resumed run rebuilds them); another seed does not.
    again = build_teacher_views(teacher, train_set, views=3, seed=4, batch_size=7)
    assert torch.equal(again.images, views.images)
    assert torch.allclose(again.logits, views.logits, atol=1e-6)  # another batch size
    other = build_teacher_views(teacher, train_set, views=3, seed=5, batch_size=5)
    assert not torch.equal(other.images, views.images)


def test_views_are_drawn_on_first_use_only(tmp_path):
    make_prepared(tmp_path, n_per_class=4, size=16, classes=CLASSES)
    teacher = tiny("test_efficientnet", 16, seed=1)
    calls = []
    teacher.net.register_forward_pre_hook(lambda m, a: calls.append(1))
    views = build_teacher_views(teacher, augmented_train_set(tmp_path), views=2, seed=0)
    assert len(views) > 0 and views.fingerprint().endswith("-views2") and not calls
    views[0]
    n_calls = len(calls)
    assert n_calls > 0 and views.build_seconds > 0
    views[1], views.logits
    assert len(calls) == n_calls  # drawn once
    with pytest.raises(ValueError, match="live teacher"):
        DistillTask(tiny("test_vit", 16), teacher, views=views, mixup=0.2)


def test_a_step_gets_the_teachers_logits_for_the_very_view_the_student_sees(tmp_path):
    make_prepared(tmp_path, n_per_class=6, size=16, classes=CLASSES)
    train_set = augmented_train_set(tmp_path)
    teacher = tiny("test_efficientnet", 16, seed=1)
    views = build_teacher_views(teacher, train_set, views=4, seed=0)
    cached = DistillTask(tiny("test_vit", 16), teacher, views=views)
    live = DistillTask(tiny("test_vit", 16), teacher)
    loader = DataLoader(views, batch_size=5, shuffle=True, generator=torch.Generator())
    seen_views = set()
    for batch in loader:
        assert torch.allclose(cached.teacher_logits(batch), live.teacher_logits(batch), atol=1e-5)
        assert torch.equal(batch["label"], torch.as_tensor(train_set.labels[batch["index"]]))
        seen_views |= set(batch["view"].tolist())
    assert len(seen_views) > 1  # steps draw among the views


def test_views_of_a_larger_teacher_come_from_its_own_resolution(tmp_path):
    make_prepared(tmp_path, n_per_class=4, size=16, classes=CLASSES, source_size=32)
    train_set = augmented_train_set(tmp_path, view_size=32)
    teacher = tiny("test_efficientnet", 32, seed=1)
    views = build_teacher_views(teacher, train_set, views=2, seed=0)
    assert views.images.shape[-1] == 16  # the student's view is stored, the teacher's is not
    with torch.no_grad():
        upsampled = teacher(
            torch.nn.functional.interpolate(views.images[0].float() / 255.0, size=32)
        )
    # Labelled from the 32-px view, not from the student's 16-px view made larger.
    assert not torch.allclose(views.logits[0], upsampled, atol=1e-3)


def test_views_need_an_augmented_train_set_and_matching_shapes(tmp_path):
    make_prepared(tmp_path, n_per_class=4, size=16, classes=CLASSES)
    prepared = load_prepared(tmp_path)
    plain = prepared.dataset(prepared.rows("train"))
    with pytest.raises(ValueError, match="augment"):
        build_teacher_views(tiny("test_vit", 16), plain, views=2, seed=0)
    shapes = (torch.zeros(2, len(plain) + 1, 3, 16, 16), torch.zeros(2, 1, 3))
    wrong = TeacherViews(plain, 2, lambda: shapes)
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        wrong[0]


@pytest.mark.parametrize(
    "other",
    ["distill.mixup=0.2", "distill.cache_teacher_logits=true", "distill.augment=false"],
)
def test_config_refuses_views_with_what_they_cannot_serve(other):
    with pytest.raises(ConfigError, match="teacher_views"):
        load_config(None, ["distill.teacher_views=4", other])
    with pytest.raises(ConfigError, match="distill.teacher_views"):
        load_config(None, ["distill.teacher_views=-1"])


def test_views_off_leave_fingerprints_as_before_the_key_existed():
    assert "teacher_views" not in fingerprint_tree(load_config(None, []))["distill"]
    views_on = load_config(None, ["distill.teacher_views=8"])
    assert fingerprint_tree(views_on)["distill"]["teacher_views"] == 8


def test_distill_with_teacher_views_trains_records_them_and_reruns_the_same(tmp_path):
    make_prepared(tmp_path, n_per_class=10, size=16, classes=CLASSES)
    save_teacher(tmp_path / "teacher" / "model", 16)
    cfg = tiny_config(tmp_path, teacher_views=3, synthetic_ratio=0.0)
    model_dir = distill(cfg, tmp_path)
    _, config = load_classifier(model_dir)
    assert config["distilled"]["teacher_views"] == 3
    stats = json.loads((tmp_path / "student" / STATS_FILE).read_text())
    assert stats["teacher_cache_seconds"] > 0 and stats["steps"] == 4
    log = [json.loads(line) for line in (tmp_path / "student/train/metrics.jsonl").open()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))

    # Run again: the loop reloads the finished stage and never draws the views; the stats
    # keep what training cost, not what the reload did.
    distill(cfg, tmp_path)
    again_stats = json.loads((tmp_path / "student" / STATS_FILE).read_text())
    assert again_stats["teacher_cache_seconds"] == stats["teacher_cache_seconds"]
    assert again_stats["train_seconds"] >= 0.5 * stats["train_seconds"]

    # Fresh training from scratch (no resume) rebuilds the same views and the same student.
    first = load_file(str(model_dir / MODEL_FILE))
    distill(cfg, tmp_path, stage="again", resume=False)
    again = load_file(str(tmp_path / "again" / "model" / MODEL_FILE))
    assert all(torch.equal(first[k], again[k]) for k in first)
