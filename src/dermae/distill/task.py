"""The distillation task handed to the shared loop: a trainable student, a frozen teacher.

Both are `Classifier`s: they take [0, 1] images and normalise them with their own mean/std,
so the teacher sees exactly its own normalisation of the image the student sees (no
un-normalise / re-normalise round trip). When the teacher was trained at another
resolution, it gets the batch's "teacher_image" (the same augmented view at a higher
resolution, cached from the source files) when there is one, else the [0, 1] batch resized
to the teacher's `image_size` (bilinear with antialiasing).

Teacher logits come live (teacher forward on the same augmented batch), from a cache of K
augmented views per row (`distill.teacher_views`, `dermae.distill.views`: consistent and
cheaper, but it lost the KD gain where measured, BENCHMARKS section 33), or from a cache made
once over the un-augmented train set (`teacher_logits_for`). The clean cache trades signal
for time: the student then sees an augmented image with the teacher's targets for the clean
one (flips/rotations change little for a lesion classifier, colour jitter a bit more), but
the teacher costs one pass instead of one pass per epoch. Measured on the shared 2-core CPU
(1 torch thread; `benchmarks/bench_distill_cache.py`): ViT-Ti/8 teacher + efficientnet_b0
student at 64 px, batch 64: a step takes 2.94 s live vs 1.96 s cached; 3 epochs of 420 images
took 57.0 s live vs 39.9 s + 7.5 s to build the cache (-17 %). The saving per extra epoch
is one teacher pass over the train set, so it grows with epochs and with the teacher's size.
Synthetic rows carry their conditioning class as a hard label unless `synthetic_hard_labels`
is off: then they are transfer images that only the teacher labels (softly).
With `mixup` > 0 (function matching, Beyer et al. 2022) each training batch is blended with
itself reversed, lam ~ Beta(mixup, mixup); the teacher labels the blended image the student
sees (live only: a cache holds logits of unmixed images), and the hard-label CE is the
lam-weighted pair of both rows' labels. timm's Mixup is not used: it mixes the labels into
one soft target, and the hard rows' masks (synthetic rows) must follow each side separately.
With `relation_weight` > 0 the student also matches the teacher's cosine similarities
between the batch's images (pooled pre-logit features; an ensemble's target is the mean of
its members' similarity matrices), computed on the same view as the logits.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dermae.classify.model import Classifier
from dermae.config import TEACHER_PRECISIONS
from dermae.data.transforms import to_resolution
from dermae.distill.losses import kd_terms, relation_loss, teacher_gram
from dermae.engine.precision import precision_scope, resolve_precision


def teacher_view(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's image: "teacher_image" (the student's view at a higher resolution) when
    the batch carries one, else the student's own "image"."""
    return batch.get("teacher_image", batch["image"])


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def teacher_scope(
    device: torch.device, precision: str, teacher: nn.Module | None = None
) -> AbstractContextManager:
    """The teacher's precision: `same` leaves whatever autocast is active, others force one
    (`auto` resolved for the teacher itself: fp32 for a depthwise teacher on a CPU)."""
    if precision == "same":
        return nullcontext()
    return precision_scope(device, precision, model=teacher)


@torch.no_grad()
def teacher_logits_for(
    teacher: Classifier,
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    precision: str = "same",
) -> torch.Tensor:
    """Teacher logits [N, C] (float32, CPU) for every item of `dataset`, in dataset order.

    Pass the un-augmented train dataset: row i of the result is looked up by batch["index"] == i.
    `precision`: as `distill.teacher_precision` (`same` is fp32 here: no autocast is active).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    home = next(teacher.parameters()).device
    teacher = freeze(teacher).to(device)
    size = int(teacher.config["image_size"])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = torch.empty(len(dataset), int(teacher.config["num_classes"]))
    for batch in tqdm(loader, desc="teacher logits", leave=False, disable=len(loader) < 5):
        with teacher_scope(device, precision, teacher):
            logits = teacher(to_resolution(teacher_view(batch).to(device), size))
        out[batch["index"]] = logits.float().cpu()
    teacher.to(home)
    return out


def _check_live_option(name: str, value: float, cached: bool, why: str) -> None:
    """A `distill.<name>` that is off at 0 and needs the live teacher when on."""
    if value < 0:
        raise ValueError(f"distill.{name} must be >= 0 (0 is off), got {value}")
    if value > 0 and cached:
        raise ValueError(
            f"distill.{name} needs the live teacher ({why}): set "
            f"distill.cache_teacher_logits=false and distill.teacher_views=0, or distill.{name}=0"
        )


class DistillTask(nn.Module):
    """forward(batch) -> {"loss", "logits", "ce", "kd"}; `.model` trains, `.teacher` never does."""

    def __init__(
        self,
        student: Classifier,
        teacher: Classifier,
        target_key: str = "label",
        alpha: float = 0.7,
        temperature: float = 2.0,
        class_weights: torch.Tensor | None = None,
        cached_logits: torch.Tensor | None = None,
        synthetic_hard_labels: bool = True,
        mixup: float = 0.0,
        teacher_precision: str = "same",
        views: Any = None,
        relation_weight: float = 0.0,
    ):
        """`views`: per-view targets (`dermae.distill.views.TeacherViews`, anything with
        `.logits` [K, N, C]) for batches that carry "view" and "index"."""
        super().__init__()
        if teacher_precision not in TEACHER_PRECISIONS:
            raise ValueError(
                f"distill.teacher_precision '{teacher_precision}' unknown; use one of "
                f"{', '.join(TEACHER_PRECISIONS)}"
            )
        self.teacher_precision = teacher_precision
        self._teacher_resolved: dict[str, str] = {}  # device type -> precision, once per run
        cached = cached_logits is not None or views is not None
        _check_live_option("mixup", mixup, cached, "a cache holds logits of unmixed images")
        _check_live_option("relation_weight", relation_weight, cached, "a cache holds no features")
        self.mixup = float(mixup)
        self.relation_weight = float(relation_weight)
        if student.config["num_classes"] != teacher.config["num_classes"]:
            raise ValueError(
                f"student has {student.config['num_classes']} classes, teacher "
                f"{teacher.config['num_classes']}: distil a teacher trained on the same labels"
            )
        self.model = student
        self.teacher = freeze(teacher)
        self.target_key = target_key
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.teacher_size = int(teacher.config["image_size"])
        self.synthetic_hard_labels = synthetic_hard_labels
        self.register_buffer("weights", class_weights if class_weights is not None else None)
        # Not persistent: the loop checkpoints only `.model`; the cache is rebuilt on resume.
        self.register_buffer("cached_logits", cached_logits, persistent=False)
        self.views = views

    def train(self, mode: bool = True) -> DistillTask:
        """Switch the student; the teacher stays in eval mode (no dropout, frozen BN statistics)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.cached_logits is not None:
            return self.cached_logits[batch["index"].to(self.cached_logits.device)]
        if self.views is not None:  # read here, so the views are drawn only if a step runs
            logits = self.views.logits[batch["view"].cpu(), batch["index"].cpu()]
            return logits.to(batch["image"].device)
        return self._live_teacher(batch, self.teacher).float()

    @torch.no_grad()
    def teacher_logits_and_gram(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The live teacher's logits and its similarity target for the batch (one pass)."""
        logits, features = self._live_teacher(batch, self.teacher.forward_with_features)
        return logits.float(), teacher_gram(features)

    def _live_teacher(self, batch: dict[str, torch.Tensor], call: Any) -> Any:
        """`call` (a teacher method) on the teacher's view at its size, in its precision."""
        image = to_resolution(teacher_view(batch), self.teacher_size)
        with teacher_scope(image.device, self._teacher_precision_on(image.device)):
            return call(image)

    def _teacher_precision_on(self, device: torch.device) -> str:
        """`teacher_precision` with `auto` resolved for the teacher, once per device type
        (walking the teacher's modules every step would add work to the hot loop)."""
        if self.teacher_precision != "auto":
            return self.teacher_precision
        if device.type not in self._teacher_resolved:
            self._teacher_resolved[device.type] = resolve_precision(
                self.teacher_precision, device, model=self.teacher
            )
        return self._teacher_resolved[device.type]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hard = None
        if not self.synthetic_hard_labels and "synthetic" in batch:
            hard = ~batch["synthetic"].bool()  # synthetic rows: the teacher's targets only
        targets = batch[self.target_key]
        lam = None
        if self.mixup > 0 and self.training:
            lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
            views = [k for k in ("image", "teacher_image") if k in batch]
            batch = {**batch, **{k: lam * batch[k] + (1 - lam) * batch[k].flip(0) for k in views}}
        relation = None
        if self.relation_weight > 0:
            logits, features = self.model.forward_with_features(batch["image"])
            teacher, target_gram = self.teacher_logits_and_gram(batch)
            relation = relation_loss(features, target_gram)
        else:
            logits = self.model(batch["image"])  # [N, C]
            teacher = self.teacher_logits(batch)
        terms = kd_terms(logits, teacher, targets, self.alpha, self.temperature, self.weights, hard)
        if lam is not None:  # the KD term is the same in both; the CE takes each side's label
            flipped = None if hard is None else hard.flip(0)
            other = kd_terms(
                logits,
                teacher,
                targets.flip(0),
                self.alpha,
                self.temperature,
                self.weights,
                flipped,
            )
            terms = {k: lam * terms[k] + (1 - lam) * other[k] for k in terms}
        if relation is not None:
            terms["loss"] = terms["loss"] + self.relation_weight * relation
            terms["relation"] = relation.detach()
        return {**terms, "logits": logits}
