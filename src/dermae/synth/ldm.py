"""Class-conditioned latent diffusion: a diffusers UNet2DModel denoising VAE latents.

Conditioning uses `num_class_embeds = num_classes + 1`; the last id is the "null" class that
label dropout trains, so sampling can use classifier-free guidance. The VAE is frozen, so the
train split is encoded once (posterior mean and std per image, cached on disk) and each step
draws a fresh latent sample from the cached posterior: the same distribution as encoding on
the fly, without the encoder's cost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

from dermae.config import Config, LDMConfig, to_dict
from dermae.data.classes import class_sampling_weights
from dermae.data.prepared import load_prepared
from dermae.engine.checkpoint import atomic_dir, commit_dir
from dermae.engine.loop import fit
from dermae.synth.common import (
    SCHEDULER_DIR,
    UNET_DIR,
    UNET_META,
    class_of_rows,
    conditioning_classes,
    conditioning_ids,
    default_device,
    file_digest,
    norm_groups,
    synth_dir,
)
from dermae.synth.vae import latent_shape, load_vae

LATENT_CACHE = "latents_train.safetensors"


def build_unet(
    cfg: LDMConfig, latent_channels: int, latent_size: int, num_classes: int
) -> UNet2DModel:
    """UNet2DModel from scratch with a learned class embedding (+1 null class for CFG)."""
    channels = tuple(cfg.block_out_channels)
    attn = [cfg.attention and i > 0 for i in range(len(channels))]
    return UNet2DModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        block_out_channels=channels,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=norm_groups(channels),
        num_class_embeds=num_classes + 1,
        add_attention=cfg.attention,
    )


def null_class_id(unet: UNet2DModel) -> int:
    return int(unet.config.num_class_embeds) - 1


def build_noise_scheduler(cfg: LDMConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,  # latents are not bounded to [-1, 1]: clipping them ruins samples
    )


def dihedral(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flip/transpose per sample (one of the 8 symmetries of the square). z: [N, C, H, W]."""
    n = z.shape[0]
    flips = torch.rand(3, n, 1, 1, 1, generator=generator).to(z.device) < 0.5
    z = torch.where(flips[0], z.flip(-1), z)
    z = torch.where(flips[1], z.flip(-2), z)
    return torch.where(flips[2], z.transpose(-1, -2), z)


class LDMTask(nn.Module):
    """Noise-prediction loss on (cached or freshly encoded) latents. `self.model` is the UNet.

    Batches carry either "latent_mean"/"latent_std" (cache) or "image" in [0, 1], plus
    "cond" (conditioning id) or, failing that, "label".
    """

    def __init__(
        self,
        unet: UNet2DModel,
        vae: AutoencoderKL,
        noise_scheduler: DDPMScheduler,
        label_dropout: float = 0.1,
        latent_augment: bool = False,
    ):
        super().__init__()
        self.model = unet
        self.vae = vae.requires_grad_(False).eval()
        self.noise_scheduler = noise_scheduler
        self.label_dropout = label_dropout
        self.latent_augment = latent_augment
        self.null_id = null_class_id(unet)
        self.scaling_factor = float(vae.config.scaling_factor)

    def latents(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scaled latent sample [N, C, h, w] for the batch."""
        if "latent_mean" in batch:
            mean, std = batch["latent_mean"], batch["latent_std"]
            z = mean + std * torch.randn_like(mean)
        else:
            with torch.no_grad():
                z = self.vae.encode(batch["image"] * 2 - 1).latent_dist.sample()
        return z.float() * self.scaling_factor

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.latents(batch)  # [N, C, h, w]
        if self.training and self.latent_augment:
            z = dihedral(z)
        labels = batch["cond"] if "cond" in batch else batch["label"]
        labels = labels.long().to(z.device)
        if self.training and self.label_dropout > 0:
            drop = torch.rand(labels.shape, device=z.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_id), labels)
        noise = torch.randn_like(z)
        t = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (z.shape[0],), device=z.device
        )
        noisy = self.noise_scheduler.add_noise(z, noise, t)
        pred = self.model(noisy, t, class_labels=labels).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(z, noise, t)
        else:
            target = noise
        loss = nn.functional.mse_loss(pred.float(), target.float())
        return {"loss": loss}


# ----------------------------------------------------------------------------- latent cache


class LatentDataset(Dataset):
    """Cached posterior (mean, std) per image + conditioning id."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, cond: torch.Tensor):
        if not (len(mean) == len(std) == len(cond)):
            raise ValueError("latent cache arrays differ in length")
        self.mean, self.std, self.cond = mean, std, cond

    def __len__(self) -> int:
        return len(self.cond)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"latent_mean": self.mean[i], "latent_std": self.std[i], "cond": self.cond[i]}


class CondDataset(Dataset):
    """Wraps a LesionDataset and adds the conditioning id (for on-the-fly encoding)."""

    def __init__(self, base: Dataset, cond: np.ndarray):
        self.base, self.cond = base, torch.from_numpy(cond)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.base[i], "cond": self.cond[i]}


@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKL, dataset: Dataset, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std ([N, C, h, w] each, fp32 CPU) of every image in `dataset`."""
    device = next(vae.parameters()).device
    means, stds = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        dist = vae.encode(batch["image"].to(device) * 2 - 1).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def cached_latents(
    vae: AutoencoderKL, dataset: Dataset, image_ids: list[str], vae_id: str, path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the train-split latent cache, or (re)build it when the VAE or the rows changed.

    The key (VAE id + row ids) lives in the safetensors metadata, so the file is one atomic unit.
    """
    ids_digest = hashlib.sha256("\n".join(image_ids).encode()).hexdigest()[:16]
    key = {"vae_id": vae_id, "ids": ids_digest, "count": str(len(image_ids))}
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            if f.metadata() == key:
                return f.get_tensor("mean"), f.get_tensor("std")
    mean, std = encode_dataset(vae, dataset)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp), metadata=key)
    tmp.replace(path)
    return mean, std


# ----------------------------------------------------------------------------- training


def train_ldm(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Train the class-conditioned UNet on real train latents; write `<run_dir>/synth/unet`.

    The folder holds the EMA weights (when ema_decay > 0) in diffusers format and
    dermae_synth.json (classes, conditioning, null id, latent shape, VAE id); the DDPM
    scheduler config goes to `<run_dir>/synth/scheduler`.
    """
    lcfg = cfg.ldm
    run_dir = Path(run_dir)
    data = load_prepared(run_dir, with_synthetic=False)
    rows = data.rows("train")  # real train rows only: val/test never reach the generator
    classes = conditioning_classes(data, lcfg.conditioning)
    cond = conditioning_ids(rows, lcfg.conditioning, classes)

    vae = load_vae(run_dir).to(default_device())
    vae_id = file_digest(synth_dir(run_dir) / "vae" / "diffusion_pytorch_model.safetensors")
    channels, side, _ = latent_shape(vae, data.image_size)
    if lcfg.cache_latents:
        mean, std = cached_latents(
            vae,
            data.dataset(rows),
            rows["image_id"].astype(str).tolist(),
            vae_id,
            synth_dir(run_dir) / LATENT_CACHE,
        )
        train_ds: Dataset = LatentDataset(mean, std, torch.from_numpy(cond))
    else:
        train_ds = CondDataset(data.dataset(rows), cond)

    unet = build_unet(lcfg, channels, side, len(classes))
    noise_scheduler = build_noise_scheduler(lcfg)
    task = LDMTask(unet, vae, noise_scheduler, lcfg.label_dropout, lcfg.latent_augment)
    result = fit(
        task,
        train_ds,
        lcfg.train,
        synth_dir(run_dir) / "ldm_train",
        desc="ldm",
        sampler_weights=(
            class_sampling_weights(cond, lcfg.class_sampling_power)
            if lcfg.class_sampling_power
            else None  # natural order: a plain shuffle, as before the option existed
        ),
        run_config={"ldm": to_dict(lcfg), "vae_id": vae_id},  # a new VAE: a new UNet
        data_hash=data.dataset(rows).fingerprint(),  # latents carry no row fingerprint
        resume=resume,
    )
    unet = result.model  # EMA weights when the loop keeps an EMA

    final = synth_dir(run_dir) / UNET_DIR
    tmp = atomic_dir(final)
    unet.save_pretrained(tmp)
    counts = class_of_rows(rows, lcfg.conditioning).value_counts()
    meta = {
        "class_names": classes,
        "conditioning": lcfg.conditioning,
        "null_id": null_class_id(unet),
        "latent_shape": [channels, side, side],
        "image_size": data.image_size,
        "vae_id": vae_id,
        "train_counts": {c: int(counts.get(c, 0)) for c in classes},
        "steps": result.step,
        "ema_decay": lcfg.train.ema_decay,
    }
    (tmp / UNET_META).write_text(json.dumps(meta, indent=2))
    commit_dir(tmp, final)
    noise_scheduler.save_pretrained(synth_dir(run_dir) / SCHEDULER_DIR)
    return final


def load_unet(run_dir: str | Path) -> tuple[UNet2DModel, dict]:
    path = synth_dir(run_dir) / UNET_DIR
    if not (path / UNET_META).exists():
        raise FileNotFoundError(f"{path} holds no UNet: run `dermae synth train -c CONFIG` first")
    unet = UNet2DModel.from_pretrained(path)
    unet.requires_grad_(False)
    return unet.eval(), json.loads((path / UNET_META).read_text())


def load_noise_scheduler(run_dir: str | Path) -> DDPMScheduler:
    return DDPMScheduler.from_pretrained(synth_dir(run_dir) / SCHEDULER_DIR)
