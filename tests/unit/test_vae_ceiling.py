"""The VAE ceiling of class fidelity: reconstructions are made like stored synthetic images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from dermae.synth.quality import reconstructed_images


class IdentityVAE(nn.Module):
    """encode/decode with diffusers' output shapes; the latent is the image in [-1, 1]."""

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=z)


class DarkeningVAE(IdentityVAE):
    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=(z + 1) / 2 - 1)  # halves every pixel value in [0, 1]


def test_a_perfect_vae_reconstructs_uint8_images_exactly_in_batches():
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    out = reconstructed_images(IdentityVAE(), images, torch.device("cpu"), batch=2)
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out, images)


def test_reconstructions_are_rounded_to_uint8_like_stored_samples():
    images = np.array([[[[254, 100, 0], [255, 4, 2]]]], dtype=np.uint8)
    out = reconstructed_images(DarkeningVAE(), images, torch.device("cpu"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[[[127, 50, 0], [128, 2, 1]]]])  # 127.5 -> 128
