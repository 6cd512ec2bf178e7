"""The VAE's perceptual term: a frozen classifier's feature distance, added to L1 + KL."""

from __future__ import annotations

import pytest
import torch

from dermae.classify.model import build_classifier, classifier_config
from dermae.config import VAEConfig
from dermae.synth.vae import FeatureDistance, VAETask, build_vae, perceptual_network_dir

CLASSES = ["bcc", "mel", "nv"]


def tiny_distance() -> FeatureDistance:
    torch.manual_seed(0)
    return FeatureDistance(build_classifier(classifier_config("resnet10t", CLASSES, ["mel"], 16)))


def test_distance_is_zero_for_equal_images_and_grows_with_the_change():
    distance = tiny_distance()
    x = torch.rand(4, 3, 16, 16)
    assert distance(x, x).item() == pytest.approx(0.0, abs=1e-6)
    near, far = distance((x + 0.02).clamp(0, 1), x).item(), distance(x.flip(0), x).item()
    assert 0 < near < far


def test_the_network_stays_frozen_in_eval_mode_and_passes_gradients_to_the_images():
    distance = tiny_distance()
    task = VAETask(build_vae(VAEConfig(block_out_channels=(8, 8)), 16), 1e-6, distance, 0.1)
    task.train()
    assert task.model.training and not distance.classifier.training
    before = {k: v.clone() for k, v in distance.classifier.state_dict().items()}
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    distance(images, torch.rand(2, 3, 16, 16)).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in distance.classifier.parameters())
    after = distance.classifier.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched


def test_the_loss_adds_the_weighted_distance_to_l1_and_kl():
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(block_out_channels=(8, 8)), 16)
    batch = {"image": torch.rand(2, 3, 16, 16)}
    distance = tiny_distance()
    torch.manual_seed(1)
    plain = VAETask(vae, 1e-3)(batch)
    torch.manual_seed(1)  # the same posterior draw
    with_term = VAETask(vae, 1e-3, distance, 0.5)(batch)
    assert "perceptual" not in plain and with_term["perceptual"] > 0
    assert torch.equal(plain["l1"], with_term["l1"])
    expected = plain["loss"] + 0.5 * with_term["perceptual"]
    assert with_term["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_loss_with_the_term_falls_on_one_batch():
    torch.manual_seed(0)
    task = VAETask(build_vae(VAEConfig(block_out_channels=(8, 8)), 16), 1e-6, tiny_distance(), 0.1)
    batch = {"image": torch.rand(4, 3, 16, 16)}
    optimizer = torch.optim.Adam(task.model.parameters(), lr=1e-2)
    first = last = None
    for _ in range(60):
        out = task(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        first = first or {k: out[k].item() for k in ("loss", "perceptual")}
        last = {k: out[k].item() for k in ("loss", "perceptual")}
    assert last["loss"] < 0.7 * first["loss"]  # measured 0.66 -> 0.35
    assert last["perceptual"] < 0.5 * first["perceptual"]  # measured 1.06 -> 0.33


def test_a_missing_baseline_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="baseline/model.*dermae train"):
        perceptual_network_dir(tmp_path)
