"""Image normalisation and augmentation, defined once.

Datasets yield float images in [0, 1]; each model normalises with its own
mean/std (stored in its checkpoint config), which makes re-normalising between a
teacher and a student exact.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

# Models here are trained from scratch, so ImageNet statistics are a convention, not a need;
# keeping them lets pretrained timm weights drop in where a user has them.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """x: [N, 3, H, W] in [0, 1] -> normalised."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def renormalize(x: torch.Tensor, src_mean, src_std, dst_mean, dst_std) -> torch.Tensor:
    """Convert an image normalised with (src_mean, src_std) to (dst_mean, dst_std)."""
    sm = torch.as_tensor(src_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    ss = torch.as_tensor(src_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return normalize(x * ss + sm, dst_mean, dst_std)


def train_augment() -> v2.Transform:
    """Light, label-preserving dermoscopy augmentation (lesions have no canonical orientation)."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation(degrees=180)], p=0.5),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02),
        ]
    )


def to_resolution(images: torch.Tensor, size: int) -> torch.Tensor:
    """images: [N, 3, H, W] in [0, 1] -> [N, 3, size, size] (unchanged when already that size).

    Bilinear with antialiasing: what a cache at that size would hold, up to the filter.
    """
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    ).clamp_(0.0, 1.0)
