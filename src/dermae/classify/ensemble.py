"""A teacher ensemble saved as one classifier folder (kind "classifier", arch "ensemble").

Members are full classifiers (each with its own arch, resolution and normalisation); the
folder holds all their weights in one safetensors file under `members.<i>.` and their configs
in config.json, so it loads (`load_classifier`), saves (`save_classifier`), evaluates and distils like any
other classifier.

The ensemble's output is the mean of the members' log-probabilities: softmax of it is the
normalised geometric mean of their predictions, which does not depend on how each member
happens to scale its logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dermae.classify.model import Classifier, build_classifier
from dermae.data.transforms import to_resolution
from dermae.engine.checkpoint import load_weights

ENSEMBLE_ARCH = "ensemble"
# Per-member entries a classifier config carries that describe training, not the network.
_MEMBER_KEYS = (
    "kind",
    "arch",
    "model_kwargs",
    "num_classes",
    "image_size",
    "mean",
    "std",
    "class_names",
    "malignant_classes",
)


class EnsembleClassifier(nn.Module):
    """[N, 3, S, S] images in [0, 1] -> mean member log-probabilities [N, C]."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(build_classifier(m) for m in config["members"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probs = [
            F.log_softmax(m(to_resolution(images, int(m.config["image_size"]))).float(), dim=-1)
            for m in self.members
        ]
        return torch.stack(log_probs).mean(0)

    def forward_with_features(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(mean member log-probabilities [N, C], each member's pooled features [N, D_m])."""
        log_probs, features = [], []
        for m in self.members:
            logits, feats = m.forward_with_features(
                to_resolution(images, int(m.config["image_size"]))
            )
            log_probs.append(F.log_softmax(logits.float(), dim=-1))
            features.append(feats)
        return torch.stack(log_probs).mean(0), features


def ensemble_config(members: list[Classifier], sources: list[str]) -> dict[str, Any]:
    first = members[0].config
    for member, source in zip(members[1:], sources[1:], strict=True):
        if list(member.config["class_names"]) != list(first["class_names"]):
            raise ValueError(
                f"ensemble member {source} predicts {member.config['class_names']}, but "
                f"{sources[0]} predicts {first['class_names']}: members need the same classes"
            )
    return {
        "kind": "classifier",
        "arch": ENSEMBLE_ARCH,
        "num_classes": first["num_classes"],
        # The largest member resolution: each member downsizes to its own.
        "image_size": max(int(m.config["image_size"]) for m in members),
        "class_names": list(first["class_names"]),
        "malignant_classes": list(first["malignant_classes"]),
        "members": [{k: m.config[k] for k in _MEMBER_KEYS if k in m.config} for m in members],
        "member_sources": list(sources),
    }


def build_ensemble(members: list[Classifier], sources: list[str]) -> EnsembleClassifier:
    """An ensemble holding copies of the members' current weights."""
    ensemble = EnsembleClassifier(ensemble_config(members, sources))
    for mine, theirs in zip(ensemble.members, members, strict=True):
        mine.load_state_dict(theirs.state_dict())
    return ensemble.eval()


def load_ensemble(directory: str | Path, config: dict[str, Any]) -> EnsembleClassifier:
    model = EnsembleClassifier(config)
    load_weights(directory, model)
    return model.eval()


__all__ = [
    "ENSEMBLE_ARCH",
    "EnsembleClassifier",
    "build_ensemble",
    "ensemble_config",
    "load_ensemble",
]
