import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from dermae.classify.model import Classifier, build_classifier, classifier_config
from dermae.data.prepared import load_prepared
from dermae.distill.task import DistillTask, teacher_logits_for, to_resolution
from tests.helpers.tiny_data import make_prepared, torch_threads

CLASSES = ["bcc", "mel", "nv"]
TEACHER_MEAN, TEACHER_STD = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def tiny(arch: str, size: int, mean=None, std=None, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    extra = {} if mean is None else {"mean": mean, "std": std}
    return build_classifier(classifier_config(arch, CLASSES, ["bcc", "mel"], size, **extra))


def images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def batch_of(x: torch.Tensor) -> dict[str, torch.Tensor]:
    n = len(x)
    return {"image": x, "label": torch.arange(n) % 3, "index": torch.arange(n)}


def test_teacher_is_frozen_gets_no_gradient_and_stays_in_eval():
    teacher = tiny("test_efficientnet", 16, seed=1)
    task = DistillTask(tiny("test_vit", 16), teacher, alpha=0.5, temperature=2.0)
    bn_before = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k}
    task.train()
    assert task.training and task.model.training
    assert not any(m.training for m in task.teacher.modules())
    assert not any(p.requires_grad for p in task.teacher.parameters())

    out = task(batch_of(images()))
    out["loss"].backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in task.model.parameters()) > 0
    # A teacher in train mode would have updated its BatchNorm statistics on this batch.
    for k, v in teacher.state_dict().items():
        if "running" in k:
            assert torch.equal(v, bn_before[k]), k
    task.train(True)
    assert not task.teacher.training


@pytest.mark.parametrize("teacher_size", [16, 32])
def test_each_network_sees_exactly_its_own_normalisation(teacher_size):
    student = tiny("test_vit", 16)
    teacher = tiny("test_vit", teacher_size, TEACHER_MEAN, TEACHER_STD, seed=1)
    seen = {}
    student.net.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0]))
    teacher.net.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0]))
    x = images()
    DistillTask(student, teacher)(batch_of(x))

    mean_s = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std_s = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.equal(seen["student"], (x - mean_s) / std_s)
    x_t = x
    if teacher_size != 16:
        x_t = F.interpolate(x, size=teacher_size, mode="bilinear", antialias=True)
    mean_t = torch.tensor(TEACHER_MEAN).view(1, 3, 1, 1)
    std_t = torch.tensor(TEACHER_STD).view(1, 3, 1, 1)
    assert seen["teacher"].shape[-1] == teacher_size
    assert torch.equal(seen["teacher"], (x_t - mean_t) / std_t)


def test_resizing_keeps_images_in_range_and_same_size_is_untouched():
    x = images(size=32)
    assert to_resolution(x, 32) is x
    small = to_resolution(x, 8)
    assert small.shape == (6, 3, 8, 8) and small.min() >= 0 and small.max() <= 1
    # Antialiased 4x downscale of a constant image is that constant.
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(to_resolution(flat, 8), torch.full((1, 3, 8, 8), 0.25))


def test_cached_logits_equal_live_teacher_logits_on_clean_images(tmp_path):
    make_prepared(tmp_path, n_per_class=6, size=16, classes=tuple(CLASSES))
    prepared = load_prepared(tmp_path)
    dataset = prepared.dataset(prepared.rows("train"))  # un-augmented
    teacher = tiny("test_efficientnet", 16, TEACHER_MEAN, TEACHER_STD, seed=1)
    cache = teacher_logits_for(teacher, dataset, batch_size=4)
    assert cache.shape == (len(dataset), 3) and len(dataset) >= 6

    cached = DistillTask(tiny("test_vit", 16), teacher, cached_logits=cache)
    live = DistillTask(tiny("test_vit", 16), teacher)
    loader = DataLoader(dataset, batch_size=5, shuffle=True, generator=torch.Generator())
    seen = 0
    for batch in loader:  # shuffled: rows are found by batch["index"], not position
        assert torch.allclose(cached.teacher_logits(batch), live.teacher_logits(batch), atol=1e-5)
        seen += len(batch["index"])
    assert seen == len(dataset)
    # The cached task never runs the teacher.
    teacher.net.register_forward_pre_hook(lambda m, a: pytest.fail("teacher ran"))
    cached(next(iter(loader)))


@pytest.mark.parametrize("student_arch", ["test_vit", "test_efficientnet"])
def test_distillation_loss_falls_on_a_fixed_batch(student_arch):
    teacher = tiny("test_vit", 16, TEACHER_MEAN, TEACHER_STD, seed=3)
    with torch.no_grad():  # a confident teacher, so the soft targets carry signal
        teacher.net.get_classifier().weight.mul_(50.0)
    task = DistillTask(tiny(student_arch, 16), teacher, alpha=0.9, temperature=2.0)
    task.train()
    batch = batch_of(images(6))
    opt = torch.optim.AdamW(task.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_student_and_teacher_must_share_classes():
    other = build_classifier(classifier_config("test_vit", ["a", "b"], ["a"], 16))
    with pytest.raises(ValueError, match="same labels"):
        DistillTask(tiny("test_vit", 16), other)


class _Recorder(torch.nn.Module):
    """A teacher stub: fixed logits, and it keeps the images it was shown."""

    def __init__(self, logits: torch.Tensor, size: int = 16):
        super().__init__()
        self.logits = logits
        self.config = {"num_classes": logits.shape[1], "image_size": size}
        self.seen: list[torch.Tensor] = []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.logits


def test_mixup_shows_the_teacher_the_students_blend_and_evaluation_never_mixes():
    x = images(6)
    teacher = _Recorder(torch.randn(6, 3, generator=torch.Generator().manual_seed(3)))
    task = DistillTask(tiny("test_efficientnet", 16), teacher, alpha=0.3, mixup=0.4)
    task.train()
    torch.manual_seed(11)
    out = task(batch_of(x))
    torch.manual_seed(11)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    assert 0 < lam < 1
    assert torch.allclose(teacher.seen[-1], lam * x + (1 - lam) * x.flip(0))
    out["loss"].backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    task.eval()
    task(batch_of(x))
    assert torch.equal(teacher.seen[-1], x)


def test_mixup_keeps_each_sides_hard_label_mask():
    from dermae.distill.losses import kd_terms

    teacher_logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    task = DistillTask(
        _Fixed(),
        _Recorder(teacher_logits),
        alpha=0.5,
        temperature=1.0,
        mixup=1.0,
        synthetic_hard_labels=False,
    )
    task.train()
    batch = {**batch_of(images(4)), "synthetic": torch.tensor([0, 0, 0, 1])}
    torch.manual_seed(4)
    out = task(batch)
    torch.manual_seed(4)
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    logits = task.model(batch["image"])
    hard = torch.tensor([True, True, True, False])
    one = kd_terms(logits, teacher_logits, batch["label"], 0.5, 1.0, None, hard)
    two = kd_terms(logits, teacher_logits, batch["label"].flip(0), 0.5, 1.0, None, hard.flip(0))
    assert out["ce"] == pytest.approx(float(lam * one["ce"] + (1 - lam) * two["ce"]), rel=1e-6)


class _Fixed(torch.nn.Module):
    """A "student" whose logits do not depend on the image, so a mixed batch gives the same."""

    def __init__(self):
        super().__init__()
        self.config = {"num_classes": 3, "image_size": 16}
        self.bias = torch.nn.Parameter(torch.tensor([0.2, -0.1, 0.4]))

    def forward(self, x):
        return self.bias.expand(len(x), 3)


def test_mixup_loss_is_the_lam_blend_of_both_sides_hard_labels():
    from dermae.distill.losses import kd_terms

    teacher_logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    task = DistillTask(_Fixed(), _Recorder(teacher_logits), alpha=0.5, temperature=1.0, mixup=1.0)
    task.train()
    batch = batch_of(images(4))
    torch.manual_seed(2)
    out = task(batch)
    torch.manual_seed(2)
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    logits = task.model(batch["image"])
    one = kd_terms(logits, teacher_logits, batch["label"], 0.5, 1.0)
    two = kd_terms(logits, teacher_logits, batch["label"].flip(0), 0.5, 1.0)
    assert out["ce"] == pytest.approx(float(lam * one["ce"] + (1 - lam) * two["ce"]), rel=1e-6)
    assert out["kd"] == pytest.approx(float(one["kd"]), rel=1e-6)
    blend = float(lam * one["loss"] + (1 - lam) * two["loss"])
    assert float(out["loss"]) == pytest.approx(blend, rel=1e-6)


def test_mixup_refuses_cached_teacher_logits():
    from dermae.config import ConfigError, load_config

    with pytest.raises(ValueError, match="live teacher"):
        DistillTask(
            tiny("test_vit", 16),
            tiny("test_vit", 16, seed=1),
            cached_logits=torch.zeros(6, 3),
            mixup=0.2,
        )
    with pytest.raises(ConfigError, match="distill.mixup"):
        load_config(None, ["distill.mixup=0.2", "distill.cache_teacher_logits=true"])


class _PrecisionProbe(torch.nn.Module):
    """A teacher stub that records the autocast state it ran under."""

    def __init__(self):
        super().__init__()
        self.config = {"num_classes": 3, "image_size": 16}
        self.linear = torch.nn.Linear(3 * 16 * 16, 3)
        self.autocast: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.linear(x.flatten(1))


@pytest.mark.parametrize(
    ("outer_bf16", "precision", "expect_autocast"),
    [(True, "same", True), (True, "no", False), (False, "same", False), (False, "bf16", True)],
)
def test_teacher_precision_overrides_the_students_autocast(outer_bf16, precision, expect_autocast):
    teacher = _PrecisionProbe()
    task = DistillTask(_Fixed(), teacher, teacher_precision=precision).eval()
    x = images(4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer_bf16):
        logits = task.teacher_logits(batch_of(x))
    assert teacher.autocast == [expect_autocast]
    assert logits.dtype == torch.float32  # the KD terms always get fp32 logits
    with torch.no_grad():
        fp32 = teacher.linear(x.flatten(1))
    # fp32 teacher logits are exactly the teacher's own; bf16 ones are rounded.
    assert torch.equal(logits, fp32) == (not expect_autocast)


def test_cached_teacher_logits_follow_teacher_precision():
    teacher = _PrecisionProbe()
    dataset = [{"image": images(1, seed=i)[0], "index": torch.tensor(i)} for i in range(3)]
    teacher_logits_for(teacher, dataset, batch_size=3, device="cpu", precision="bf16")
    teacher_logits_for(teacher, dataset, batch_size=3, device="cpu")
    assert teacher.autocast == [True, False]


def test_unknown_teacher_precision_is_refused():
    with pytest.raises(ValueError, match="teacher_precision 'fp8'"):
        DistillTask(_Fixed(), _PrecisionProbe(), teacher_precision="fp8")


def test_auto_teacher_precision_is_resolved_once_per_device(monkeypatch):
    import dermae.distill.task as task_module

    calls = []

    def counting(requested, device, model=None):
        calls.append((requested, device.type))
        return "bf16"

    monkeypatch.setattr(task_module, "resolve_precision", counting)
    teacher = _PrecisionProbe()
    task = DistillTask(_Fixed(), teacher, teacher_precision="auto").eval()
    for seed in range(3):
        task.teacher_logits(batch_of(images(4, seed=seed)))
    # Resolving walks the teacher's modules: once per run, not once per step.
    assert calls == [("auto", "cpu")]
    assert teacher.autocast == [True, True, True]  # what the one resolution said, every step
