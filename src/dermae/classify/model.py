"""A classifier checkpoint = timm model weights + a JSON config that says how to rebuild and use it.

config.json keys (all checkpoints of kind "classifier"):
    kind: "classifier"
    arch: timm model name           model_kwargs: extra timm.create_model kwargs
    num_classes, image_size, mean, std, class_names, malignant_classes
    threshold (optional): {"malignant_risk": t, "specificity": s} chosen on validation
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import group_parameters
from timm.optim._param_groups import auto_group_layers
from torch import nn

from dermae.data.transforms import MEAN, STD, normalize
from dermae.engine.attention import plain_attention_on_cpu
from dermae.engine.checkpoint import load_config_json, load_weights, save_model

# Normalisation layers that timm ViTs may add on top of what a backbone holds.
HEAD_KEY_PREFIXES = ("head.", "fc_norm.", "head_drop.")


def classifier_config(
    arch: str,
    class_names: list[str],
    malignant_classes: list[str],
    image_size: int,
    model_kwargs: dict[str, Any] | None = None,
    mean=MEAN,
    std=STD,
) -> dict[str, Any]:
    return {
        "kind": "classifier",
        "arch": arch,
        "model_kwargs": dict(model_kwargs or {}),
        "num_classes": len(class_names),
        "image_size": int(image_size),
        "mean": list(mean),
        "std": list(std),
        "class_names": list(class_names),
        "malignant_classes": list(malignant_classes),
    }


def create_timm_model(arch: str, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """timm model from scratch (no downloads); ViTs get the working image size."""
    extra = dict(kwargs)
    if "vit" in arch or "deit" in arch:
        extra.setdefault("img_size", image_size)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **extra)


class Classifier(nn.Module):
    """timm backbone that takes [0, 1] images and normalises them itself."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        # channels_last: oneDNN's convolutions ran 1.1-1.8x faster on it on this CPU (training and
        # inference, fp32 and bf16; BENCHMARKS.md section 34) and ViTs are unchanged. Only the
        # weights' layout changes, not the math; checkpoints are saved contiguous.
        self.net = create_timm_model(
            config["arch"], config["num_classes"], config["image_size"], **config["model_kwargs"]
        ).to(memory_format=torch.channels_last)
        plain_attention_on_cpu(self.net)  # ViTs: the fused CPU kernel is the slow one here
        self.register_buffer(
            "mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] in [0, 1] -> logits [N, C]."""
        return self.net((images - self.mean) / self.std)

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, C], pooled pre-logit features [N, D]) from one pass of the backbone.

        timm's head runs twice on the pooled map, once stopping before the classifier: that
        costs a 1x1 conv at most and keeps the logits exactly those of `forward`.
        """
        x = self.net.forward_features((images - self.mean) / self.std)
        return self.net.forward_head(x), self.net.forward_head(x, pre_logits=True).flatten(1)

    # timm's optimizer factory reads these two from the module it optimises; forwarding them
    # (with the `net.` prefix of our parameter names) gives every classifier layer decay and
    # no weight decay on pos_embed/cls_token, whether the loop gets the Classifier or its net.
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Callable[[str], float]:
        if hasattr(self.net, "group_matcher"):
            layer_of = group_parameters(self.net, self.net.group_matcher(coarse), reverse=True)
        else:
            layer_of = auto_group_layers(self.net)
        return lambda name: layer_of.get(name.removeprefix("net."), float("inf"))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.net, "no_weight_decay", None)
        return {f"net.{name}" for name in inner()} if inner is not None else set()

    @property
    def checkpoint_module(self) -> nn.Module:
        """What checkpoints store (the loop's and `save_classifier`'s): timm's keys, no prefix."""
        return self.net


def build_classifier(config: dict[str, Any]) -> Classifier:
    return Classifier(config)


def save_classifier(
    directory: str | Path, model: nn.Module, extra: dict[str, Any] | None = None
) -> Path:
    """A `Classifier` (its timm net's weights) or an ensemble (all members' weights)."""
    config = {**model.config, **(extra or {})}
    return save_model(directory, model.net if isinstance(model, Classifier) else model, config)


def load_classifier(directory: str | Path) -> tuple[Classifier, dict[str, Any]]:
    config = load_config_json(directory)
    if config.get("kind") != "classifier":
        raise ValueError(f"{directory} holds a '{config.get('kind')}' checkpoint, not a classifier")
    if config.get("arch") == "ensemble":
        from dermae.classify.ensemble import load_ensemble  # it builds on this module

        return load_ensemble(directory, config), config
    model = build_classifier(config)
    load_weights(directory, model.net)
    model.eval()
    return model, config


__all__ = [
    "Classifier",
    "build_classifier",
    "classifier_config",
    "create_timm_model",
    "load_classifier",
    "normalize",
    "save_classifier",
]
