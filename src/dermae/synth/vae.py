"""The latent autoencoder: a diffusers AutoencoderKL trained from scratch on the real train split.

Loss = L1(reconstruction) + kl_weight * KL, both per pixel: the Stable Diffusion weighting
(sum over pixels, KL weight 1e-6) divided by the number of pixels, so kl_weight keeps its
usual meaning. No adversarial term: a patch discriminator needs a second optimiser, which the
one training loop does not have, and would cost ~50 % more per step on CPU.

Optional perceptual term (`vae.perceptual_weight`): Stable Diffusion's VAE adds LPIPS, whose
ImageNet weights cannot be downloaded here, so the features come from the run's real-trained
baseline instead (`FeatureDistance`). Without it, the L1 optimum is a blur that the
classifiers no longer recognise as the lesion's class (BENCHMARKS.md section 31).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn
from torch.utils.data import Dataset, Subset
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchvision.transforms import v2

from dermae.classify.model import Classifier, load_classifier
from dermae.config import Config, ConfigError, VAEConfig, to_dict, without_later_keys
from dermae.data.classes import class_sampling_weights
from dermae.data.prepared import load_prepared
from dermae.engine.checkpoint import atomic_dir, commit_dir
from dermae.engine.loop import fit
from dermae.synth.common import (
    VAE_DIR,
    default_device,
    image_grid,
    norm_groups,
    save_png,
    synth_dir,
    to_uint8,
)


def build_vae(cfg: VAEConfig, image_size: int = 64) -> AutoencoderKL:
    """AutoencoderKL from scratch; downsampling factor = 2 ** (len(block_out_channels) - 1)."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=norm_groups(cfg.block_out_channels),
        sample_size=image_size,
        scaling_factor=1.0,  # set from data by `latent_scaling_factor` after training
        mid_block_add_attention=cfg.mid_attention,
    )


def latent_shape(vae: AutoencoderKL, image_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of the latents of a square image."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % factor:
        raise ConfigError(
            f"image size {image_size} is not divisible by the VAE downsampling factor {factor}: "
            "change data.image_size or vae.block_out_channels"
        )
    side = image_size // factor
    return vae.config.latent_channels, side, side


class FeatureDistance(nn.Module):
    """LPIPS's distance without its learned channel weights, in a frozen classifier's features:
    at every stage (timm `forward_intermediates`), features normalised over channels, squared
    differences summed over channels and averaged over positions; the stages summed."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FeatureDistance:
        return super().train(False)  # frozen: batch norm keeps its running statistics

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.classifier.mean) / self.classifier.std
        return self.classifier.net.forward_intermediates(x, intermediates_only=True)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over the batch; both [N, 3, H, W] in [0, 1]."""
        total = images.new_zeros(())
        for a, b in zip(self.features(images), self.features(targets), strict=True):
            a, b = (
                nn.functional.normalize(a.float(), dim=1),
                nn.functional.normalize(b.float(), dim=1),
            )
            total = total + (a - b).pow(2).sum(dim=1).mean()
        return total


class VAETask(nn.Module):
    """batch["image"] in [0, 1] -> reconstruction loss. `self.model` is the AutoencoderKL."""

    def __init__(
        self,
        vae: AutoencoderKL,
        kl_weight: float = 1e-6,
        perceptual: FeatureDistance | None = None,
        perceptual_weight: float = 0.0,
    ):
        super().__init__()
        self.model = vae
        self.kl_weight = kl_weight
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"] * 2 - 1  # [N, 3, H, W] in [-1, 1]
        posterior = self.model.encode(x).latent_dist
        recon = self.model.decode(posterior.sample()).sample  # [N, 3, H, W]
        l1 = (recon.float() - x.float()).abs().mean()
        kl = posterior.kl().float().mean() / x[0].numel()  # per-pixel KL
        loss = l1 + self.kl_weight * kl
        out = {"l1": l1.detach(), "kl": kl.detach(), "recon": recon.detach()}
        if self.perceptual is not None and self.perceptual_weight > 0:
            perceptual = self.perceptual((recon + 1) / 2, batch["image"])
            loss = loss + self.perceptual_weight * perceptual
            out["perceptual"] = perceptual.detach()
        return {"loss": loss, **out}


def perceptual_network_dir(run_dir: Path) -> Path:
    """Whose features `vae.perceptual_weight` measures in: the run's real-trained baseline."""
    path = run_dir / "baseline" / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"vae.perceptual_weight > 0 needs the real-data baseline at {path}: run "
            "`dermae train -c CONFIG` first, or set vae.perceptual_weight: 0"
        )
    return path


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> deterministic reconstruction (posterior mode) in [0, 1]."""
    z = vae.encode(images * 2 - 1).latent_dist.mode()
    return ((vae.decode(z).sample + 1) / 2).clamp(0, 1)


def _batches(dataset: Dataset, batch_size: int):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    yield from loader


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, dataset: Dataset, batch_size: int = 64) -> float:
    """1 / std of sampled latents over `dataset`, so the diffusion model sees unit variance."""
    device = next(vae.parameters()).device
    total, total_sq, count = 0.0, 0.0, 0
    gen = torch.Generator(device="cpu").manual_seed(0)
    for batch in _batches(dataset, batch_size):
        dist = vae.encode(batch["image"].to(device) * 2 - 1).latent_dist
        noise = torch.randn(dist.mean.shape, generator=gen).to(device)
        z = (dist.mean + dist.std * noise).double()
        total += z.sum().item()
        total_sq += z.pow(2).sum().item()
        count += z.numel()
    mean = total / count
    std = max(total_sq / count - mean**2, 1e-12) ** 0.5
    return 1.0 / std


@torch.no_grad()
def reconstruction_metrics(
    vae: AutoencoderKL, dataset: Dataset, batch_size: int = 64
) -> dict[str, float]:
    """PSNR and SSIM (data range 1) of deterministic reconstructions over `dataset`."""
    device = next(vae.parameters()).device
    psnr = PeakSignalNoiseRatio(data_range=1.0).to(device)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
    for batch in _batches(dataset, batch_size):
        images = batch["image"].to(device)
        recon = reconstruct(vae, images).float()
        with torch.autocast(device.type, enabled=False):  # SSIM in bf16 is off by ~0.1
            psnr.update(recon, images)
            ssim.update(recon, images)
    return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute()), "images": len(dataset)}


def save_reconstruction_grid(
    vae: AutoencoderKL, dataset: Dataset, path: Path, count: int = 8
) -> Path:
    """Originals (top row) above their reconstructions (bottom row)."""
    device = next(vae.parameters()).device
    images = torch.stack([dataset[i]["image"] for i in range(min(count, len(dataset)))])
    recon = reconstruct(vae, images.to(device))
    save_png(image_grid([to_uint8(images), to_uint8(recon)]), path)
    return path


def _subset(dataset: Dataset, limit: int, seed: int = 0) -> Dataset:
    if limit <= 0 or limit >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=g)[:limit].tolist())


class RandomTranspose(nn.Module):
    """Swap height and width with probability p (with the flips: all 8 square symmetries)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.transpose(-1, -2) if torch.rand(()) < self.p else image


def vae_augment() -> v2.Transform:
    """The 8 symmetries of the square: lesions have no orientation, and an encoder trained on
    all of them keeps latent flips/transposes (the LDM's latent_augment) meaningful."""
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomTranspose()])


def train_vae(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Train the VAE on the real train split; write `<run_dir>/synth/vae` (diffusers folder).

    The folder also holds metrics.json (val PSNR/SSIM) and reconstructions.png.
    """
    vcfg = cfg.vae
    if vcfg.disc_weight > 0:
        raise ConfigError(
            "vae.disc_weight > 0: dermae's VAE has no patch discriminator; set vae.disc_weight=0"
        )
    run_dir = Path(run_dir)
    data = load_prepared(run_dir, with_synthetic=False)
    train_rows = data.rows("train")  # real train rows only: val/test never reach the generator
    val_rows = data.rows("val")
    train_ds = data.dataset(train_rows, transform=vae_augment() if vcfg.augment else None)

    vae = build_vae(vcfg, data.image_size)
    latent_shape(vae, data.image_size)  # fail early on an incompatible image size
    network = perceptual_network_dir(run_dir) if vcfg.perceptual_weight > 0 else None
    perceptual = FeatureDistance(load_classifier(network)[0]) if network else None
    task = VAETask(vae, vcfg.kl_weight, perceptual, vcfg.perceptual_weight)
    val_probe = _subset(data.dataset(val_rows), 256)

    def evaluate(task: VAETask) -> dict[str, float]:  # the loop sets eval mode and no_grad
        metrics = reconstruction_metrics(task.model, val_probe)
        return {"psnr": metrics["psnr"], "ssim": metrics["ssim"]}

    result = fit(
        task,
        train_ds,
        vcfg.train,
        synth_dir(run_dir) / "vae_train",
        evaluate=evaluate if len(val_rows) else None,
        desc="vae",
        sampler_weights=(
            class_sampling_weights(train_ds.labels, vcfg.class_sampling_power)
            if vcfg.class_sampling_power
            else None  # a plain shuffle, as before the option existed
        ),
        # Its own section only: other stages' settings do not make a VAE checkpoint stale.
        run_config={"vae": without_later_keys("vae", to_dict(vcfg))},
        resume=resume,
        upstream=[network] if network else [],
    )
    vae = result.model.eval()
    device = default_device()
    vae.to(device)

    plain_train = data.dataset(train_rows)
    scale = latent_scaling_factor(vae, _subset(plain_train, vcfg.scale_images, cfg.seed))
    vae.register_to_config(scaling_factor=scale)

    final = synth_dir(run_dir) / VAE_DIR
    tmp = atomic_dir(final)
    vae.save_pretrained(tmp)
    metrics = {
        "split": "val",
        **(reconstruction_metrics(vae, data.dataset(val_rows)) if len(val_rows) else {}),
        "scaling_factor": scale,
        "train_images": len(train_rows),
        "steps": result.step,
        "latent_shape": list(latent_shape(vae, data.image_size)),
    }
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    grid_source = data.dataset(val_rows) if len(val_rows) else plain_train
    save_reconstruction_grid(vae, grid_source, tmp / "reconstructions.png")
    commit_dir(tmp, final)
    return final


def load_vae(run_dir: str | Path) -> AutoencoderKL:
    path = synth_dir(run_dir) / VAE_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path} holds no VAE: run `dermae synth train-vae -c CONFIG` first"
        )
    vae = AutoencoderKL.from_pretrained(path)
    vae.requires_grad_(False)
    return vae.eval()
