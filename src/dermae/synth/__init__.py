"""Step 1 of DerMAE: class-conditioned latent diffusion that balances the train split."""

from dermae.synth.ldm import LDMTask, build_unet, load_unet, train_ldm
from dermae.synth.quality import evaluate_synthetic
from dermae.synth.sample import generate, plan_balance, sample_balanced
from dermae.synth.vae import VAETask, build_vae, load_vae, train_vae

__all__ = [
    "LDMTask",
    "VAETask",
    "build_unet",
    "build_vae",
    "evaluate_synthetic",
    "generate",
    "load_unet",
    "load_vae",
    "plan_balance",
    "sample_balanced",
    "train_ldm",
    "train_vae",
]
