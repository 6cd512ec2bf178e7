"""`dermae pretrain`: MAE pre-training of the ViT teacher on real + synthetic TRAIN images.

Writes into `<run_dir>/pretrain/`:
    train/                          the shared loop's log and resumable state
    encoder/                        timm-loadable ViT encoder (model.safetensors + config.json,
                                    kind "vit_encoder"); loads into timm.create_model(arch,
                                    num_classes=C, img_size=image_size, **model_kwargs) with only
                                    the head (and fc_norm) missing
    reconstructions.png             original / masked / reconstruction of VALIDATION images
                                    (viewing only: validation images never train anything)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms import v2
from torchvision.utils import make_grid, save_image

from dermae.config import Config, to_dict
from dermae.data.prepared import PreparedData, load_prepared
from dermae.engine.checkpoint import save_model, seed_everything
from dermae.engine.loop import fit
from dermae.layout import PRETRAIN
from dermae.pretrain.mae import MAETask, MaskedAutoencoder, build_mae

ENCODER_DIR = "encoder"
GRID_FILE = "reconstructions.png"


def encoder_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PRETRAIN / ENCODER_DIR


def mae_augment(image_size: int, min_crop_scale: float) -> v2.Transform:
    """MAE-style views: random resized crop + flips (no colour jitter, as in the paper)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(min_crop_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
        ]
    )


def pretrain_rows(cfg: Config, prepared: PreparedData):
    """TRAIN rows only (real + synthetic by pretrain.synthetic_ratio); never val or test."""
    use_synth = cfg.data.include_synthetic and cfg.pretrain.synthetic_ratio > 0
    return prepared.rows(
        "train",
        include_synthetic=use_synth,
        synthetic_ratio=cfg.pretrain.synthetic_ratio,
        seed=cfg.seed,
    )


@torch.no_grad()
def save_reconstruction_grid(
    task: MAETask, images: torch.Tensor, path: str | Path, seed: int = 0
) -> Path:
    """Rows: original, masked input (hidden patches grey), reconstruction. images in [0, 1]."""
    mae: MaskedAutoencoder = task.model
    was_training = mae.training
    mae.eval()
    device = next(mae.parameters()).device
    images = images.to(device)
    x = task.normalize(images)
    generator = torch.Generator(device=device).manual_seed(seed)
    _, pred, mask = mae(x, generator=generator)
    recon = mae.reconstruct(x, pred, mask) * task.std + task.mean  # back to [0, 1]
    pixel_mask = mae.unpatchify(
        mask.unsqueeze(-1).expand(-1, -1, mae.patch_size**2 * 3).float()
    )  # [N, 3, H, W], 1 = hidden
    masked = images * (1 - pixel_mask) + 0.5 * pixel_mask
    rows = torch.cat([images, masked, recon.clamp(0, 1)], dim=0).float().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(rows, nrow=images.shape[0], padding=2, pad_value=1.0), path)
    mae.train(was_training)
    return path


def pretrain(cfg: Config, run_dir: str | Path, resume: bool = True, stage: str = PRETRAIN) -> Path:
    """MAE pre-training; returns the encoder checkpoint folder `<run_dir>/<stage>/encoder`.

    `stage` lets the ablation pre-train another encoder (e.g. without synthetic images).
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / stage
    mcfg = cfg.pretrain
    prepared = load_prepared(
        run_dir, with_synthetic=cfg.data.include_synthetic and mcfg.synthetic_ratio > 0
    )
    transform = mae_augment(prepared.image_size, mcfg.min_crop_scale) if mcfg.augment else None
    train_set = prepared.dataset(pretrain_rows(cfg, prepared), transform)

    seed_everything(mcfg.train.seed)
    task = MAETask(build_mae(mcfg, prepared.image_size))
    result = fit(
        task,
        train_set,
        mcfg.train,
        out_dir / "train",
        model=task.model,
        resume=resume,
        desc="pretrain",
        run_config={"stage": to_dict(mcfg)},
        num_workers=cfg.data.num_workers,
    )
    mae: MaskedAutoencoder = result.model  # EMA weights when train.ema_decay > 0

    path = save_model(out_dir / ENCODER_DIR, mae.encoder.cpu(), mae.encoder_config())
    val_rows = prepared.rows("val")
    if len(val_rows) and mcfg.grid_images > 0:
        val_set = prepared.dataset(val_rows.head(mcfg.grid_images))
        images = torch.stack([val_set[i]["image"] for i in range(len(val_set))])
        save_reconstruction_grid(task.cpu(), images, out_dir / GRID_FILE, seed=mcfg.train.seed)
    return path


__all__ = ["encoder_dir", "mae_augment", "pretrain", "pretrain_rows", "save_reconstruction_grid"]
