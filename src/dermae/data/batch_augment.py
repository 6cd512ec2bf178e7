"""`train_augment()`'s flips, rotation and colour jitter, drawn per image, applied per batch.

torchvision's v2 transforms draw one set of parameters per call, so per-image augmentation
runs them once per image: about 53 ms of every 64-image step on this CPU (BENCHMARKS.md §34),
about a third of a small student's step. Here every image still gets its own draw, but each
operation runs once on the whole batch, as a few tensor ops: 19 ms.

What matches `train_augment()`: horizontal and vertical flips (p 0.5 each); rotation by an
angle uniform in [-180, 180] degrees with p 0.5, nearest neighbour, black corners; brightness,
contrast and saturation factors uniform in [0.9, 1.1] and a hue shift uniform in [-0.02, 0.02]
turns. What differs: the colour operations run in one fixed order (torchvision permutes them
per image), and in float, without rounding to uint8 after each.

A batch's "teacher_image" (the same view at a teacher's resolution) gets the very same draw.
Parameters come from torch's global RNG, which the training loop saves and restores, so resume
stays exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import default_collate
from torchvision.transforms.v2.functional import rgb_to_grayscale

IMAGE_KEYS = ("image", "teacher_image")
ROTATION_P = 0.5
MAX_DEGREES = 180.0
JITTER = 0.1  # brightness, contrast, saturation: factor in [1 - JITTER, 1 + JITTER]
HUE = 0.02  # turns


def draw_params(n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One augmentation draw per image of a batch of `n`."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    return {
        "hflip": torch.rand(n, generator=generator) < 0.5,
        "vflip": torch.rand(n, generator=generator) < 0.5,
        "rotate": torch.rand(n, generator=generator) < ROTATION_P,
        "degrees": uniform(-MAX_DEGREES, MAX_DEGREES),
        "brightness": uniform(1 - JITTER, 1 + JITTER),
        "contrast": uniform(1 - JITTER, 1 + JITTER),
        "saturation": uniform(1 - JITTER, 1 + JITTER),
        "hue": uniform(-HUE, HUE),
    }


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre, nearest neighbour, zeros outside."""
    radians = degrees * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _shift_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, hue + turns (mod 1), -> RGB, per image; x in [0, 1]."""
    r, g, b = x.unbind(1)
    high, argmax = x.max(1)
    low = x.min(1).values
    chroma = high - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        argmax == 0,
        ((g - b) / safe) % 6,
        torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + turns.view(-1, 1, 1)) % 1.0
    saturation = torch.where(high > 0, chroma / torch.where(high > 0, high, 1.0), 0.0)
    # HSV -> RGB with the continuous form: channel k = v - v*s*clamp(min(m, 4 - m), 0, 1),
    # m = (k_offset + 6h) mod 6 for offsets 5 (R), 3 (G), 1 (B).
    sector = hue.unsqueeze(1) * 6 + torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype).view(1, 3, 1, 1)
    m = sector % 6
    ramp = torch.clamp(torch.minimum(m, 4 - m), 0.0, 1.0)
    v, s = high.unsqueeze(1), saturation.unsqueeze(1)
    return v - v * s * ramp


def apply_params(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """x: float [N, 3, H, W] in [0, 1] -> the augmented batch (a new tensor)."""
    x = torch.where(_per_image(params["hflip"]), x.flip(-1), x)
    x = torch.where(_per_image(params["vflip"]), x.flip(-2), x)
    rotate = params["rotate"]
    if bool(rotate.any()):  # x is already a new tensor (torch.where)
        x[rotate] = _rotate(x[rotate], params["degrees"][rotate])
    x = (x * _per_image(params["brightness"])).clamp(0.0, 1.0)
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + _per_image(params["contrast"]) * (x - mean)).clamp(0.0, 1.0)
    gray = rgb_to_grayscale(x)
    x = (gray + _per_image(params["saturation"]) * (x - gray)).clamp(0.0, 1.0)
    return _shift_hue(x, params["hue"]).clamp(0.0, 1.0)


def augment_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """One draw per row, applied to the batch's image and, alike, to its teacher_image."""
    params = draw_params(batch["image"].shape[0])
    return {k: apply_params(v, params) if k in IMAGE_KEYS else v for k, v in batch.items()}


def augmenting_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A DataLoader collate_fn: stack the rows, then augment the batch."""
    return augment_batch(default_collate(items))


__all__ = [
    "apply_params",
    "augment_batch",
    "augmenting_collate",
    "draw_params",
]
