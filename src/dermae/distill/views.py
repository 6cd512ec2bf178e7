"""Teacher targets cached per augmented view (`distill.teacher_views`).

The live teacher labels every augmented batch the student sees: consistent, but its forward
pass is paid every step, which makes a patient (long) schedule or a large teacher expensive
on a CPU (BENCHMARKS section 29: a third of a step). The clean-image cache
(`cache_teacher_logits`) is cheap but inconsistent. This is the middle way the issue names,
"cached per view": each train row is augmented K times once, the teacher labels those K views
(at its own resolution when it has one), and every training step serves the student one of
its row's K views, picked at random, with the teacher's logits for exactly that view. The
teacher's cost becomes K passes over the train set instead of one per epoch, and augmentation
is paid once instead of every step. What it gives up is view diversity: a row offers K views,
not a fresh one per epoch.

Measured (BENCHMARKS section 33): on section 29's patient phone student, K=8 (about 25 epochs,
so each view served ~3 times) made a (d) seed about 40 % cheaper and took away its whole KD
gain over (b) (+0.039 live, -0.000 cached, three seeds; every seed below its live twin). So
no config turns it on; it may pay only where the teacher costs far more than the student.

The views are drawn with their own seed (the training seed) in a forked RNG, so a resumed run
rebuilds the same views and the training RNG stream is untouched by building them. They are
drawn on first use, so reloading a finished stage costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dermae.classify.model import Classifier
from dermae.data.prepared import LesionDataset
from dermae.data.transforms import to_resolution
from dermae.distill.task import freeze, teacher_scope, teacher_view


class TeacherViews(Dataset):
    """Item i: one of row i's K cached views, chosen with the global RNG (as augmentation is),
    with "view" = k so the task can look up the teacher's logits `logits[k, i]`.

    `make` draws and labels the views; it runs on first use (an item, or `.logits`), so a
    finished stage that the loop only reloads never pays for them.
    """

    def __init__(
        self,
        base: LesionDataset,
        views: int,
        make: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    ):
        self.base = base
        self.views = int(views)
        self._make = make
        self._images: torch.Tensor | None = None  # uint8 [K, N, 3, S, S]
        self._logits: torch.Tensor | None = None  # float32 [K, N, C]
        self.build_seconds = 0.0
        self.labels = base.labels
        self.malignant = base.malignant
        self.rows = base.rows

    def _built(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is None or self._logits is None:
            start = time.perf_counter()
            images, logits = self._make()
            expected = (self.views, len(self.base))
            if tuple(images.shape[:2]) != expected or tuple(logits.shape[:2]) != expected:
                raise ValueError(
                    f"views {tuple(images.shape[:2])} and logits {tuple(logits.shape[:2])} must "
                    f"both be [K, N] = {list(expected)}"
                )
            self._images, self._logits = images, logits
            self.build_seconds = time.perf_counter() - start
        return self._images, self._logits

    @property
    def images(self) -> torch.Tensor:
        return self._built()[0]

    @property
    def logits(self) -> torch.Tensor:
        return self._built()[1]

    def __len__(self) -> int:
        return len(self.base)

    def fingerprint(self) -> str:
        return f"{self.base.fingerprint()}-views{self.views}"

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        images = self.images
        k = int(torch.randint(self.views, ()))
        return {
            "image": images[k, i].float().div_(255.0),
            "label": torch.tensor(self.labels[i]),
            "malignant": torch.tensor(self.malignant[i]),
            "index": torch.tensor(i),
            "view": torch.tensor(k),
            "synthetic": torch.tensor(self.base.synthetic[i]),
        }


@torch.no_grad()
def _draw_and_label(
    teacher: Classifier,
    train_set: LesionDataset,
    views: int,
    seed: int,
    precision: str,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    home = next(teacher.parameters()).device
    teacher = freeze(teacher).to(device)
    size = int(teacher.config["image_size"])
    n = len(train_set)
    images: torch.Tensor | None = None
    logits = torch.empty(views, n, int(teacher.config["num_classes"]))
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=False)
    bar = tqdm(total=views * len(loader), desc="teacher views", leave=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k in range(views):
            for batch in loader:
                index = batch["index"]
                # The dataset made these floats from uint8 pixels: storing uint8 is exact.
                pixels = batch["image"].mul(255.0).round_().to(torch.uint8)
                if images is None:
                    images = torch.empty((views, n, *pixels.shape[1:]), dtype=torch.uint8)
                images[k, index] = pixels
                with teacher_scope(device, precision, teacher):
                    out = teacher(to_resolution(teacher_view(batch).to(device), size))
                logits[k, index] = out.float().cpu()
                bar.update()
    bar.close()
    teacher.to(home)
    assert images is not None  # a train set has rows
    return images, logits


def build_teacher_views(
    teacher: Classifier,
    train_set: LesionDataset,
    views: int,
    seed: int,
    precision: str = "same",
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> TeacherViews:
    """`views` augmented passes over `train_set` (its own transform and teacher view), each
    labelled by `teacher`, drawn on first use. `precision` as `distill.teacher_precision`
    (`same`: fp32, no autocast is active here)."""
    if views < 1:
        raise ValueError(f"distill.teacher_views must be >= 1 to build views, got {views}")
    if train_set.transform is None:
        raise ValueError(
            "teacher views of an un-augmented train set would be K copies of one image: "
            "set distill.augment=true, or distill.teacher_views=0"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return TeacherViews(
        train_set,
        views,
        lambda: _draw_and_label(teacher, train_set, views, seed, precision, batch_size, device),
    )


__all__ = ["TeacherViews", "build_teacher_views"]
