"""Masked autoencoder (He et al. 2021) around a timm VisionTransformer.

The encoder *is* a timm ViT (`timm.create_model(arch, num_classes=0, ...)`), used piece by piece
(patch_embed, cls_token, pos_embed, blocks, norm) so that it only sees the visible patches. Its
state dict therefore loads straight into `timm.create_model(arch, num_classes=C, ...)` for
fine-tuning, with only the classifier head new. The decoder is a few timm `Block`s of its own
width with its own (fixed, 2-D sin-cos) positional embedding and a learned mask token.

Shapes: N batch, C=3 channels, H=W image side, p patch side, L=(H/p)^2 patches,
K kept patches, D encoder width, E decoder width.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from dermae.config import MAEConfig
from dermae.data.transforms import MEAN, STD
from dermae.engine.attention import plain_attention_on_cpu

# Short names -> (timm architecture, kwargs overriding it). Patch 8 keeps 64-px images at 8x8
# tokens; the GPU configs use the paper's ViT-H/14 at 224 px.
VIT_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # For tests and smoke runs only: 2 blocks of width 32.
    "vit_micro_patch4": (
        "vit_tiny_patch16_224",
        {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
    ),
    "vit_tiny_patch8": ("vit_tiny_patch16_224", {"patch_size": 8}),
    "vit_small_patch8": ("vit_small_patch16_224", {"patch_size": 8}),
    "vit_base_patch16": ("vit_base_patch16_224", {}),
    "vit_large_patch16": ("vit_large_patch16_224", {}),
    "vit_huge_patch14": ("vit_huge_patch14_224", {}),
}


def resolve_vit(name: str) -> tuple[str, dict[str, Any]]:
    """Registry name (or a plain timm ViT name) -> (timm arch, model kwargs)."""
    if name in VIT_MODELS:
        arch, kwargs = VIT_MODELS[name]
        return arch, dict(kwargs)
    if name.startswith(("vit_", "deit")) and timm.is_model(name):
        return name, {}
    raise ValueError(
        f"unknown ViT '{name}': use one of {', '.join(VIT_MODELS)} or a timm vit_* model name"
    )


def create_vit_encoder(arch: str, image_size: int, **model_kwargs: Any) -> nn.Module:
    """A timm ViT without classifier head, from scratch (no downloads)."""
    return timm.create_model(
        arch, pretrained=False, img_size=image_size, num_classes=0, **model_kwargs
    )


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per image: round(L * (1 - ratio)), at least one."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


class MaskedAutoencoder(nn.Module):
    def __init__(
        self,
        arch: str,
        image_size: int,
        model_kwargs: dict[str, Any] | None = None,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        self.arch = arch
        self.model_kwargs = dict(model_kwargs or {})
        self.image_size = int(image_size)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        num_kept(1, mask_ratio)  # validates the ratio early

        self.encoder = create_vit_encoder(arch, image_size, **self.model_kwargs)
        enc = self.encoder
        if (
            enc.cls_token is None
            or enc.reg_token is not None
            or enc.no_embed_class
            or enc.pos_embed is None
            or enc.dynamic_img_size
        ):
            raise ValueError(
                f"{arch} with {self.model_kwargs}: the MAE needs a ViT with a class token, a "
                "learned absolute pos_embed that covers it, no register tokens and a fixed image size"
            )
        self.patch_size = int(enc.patch_embed.patch_size[0])
        self.grid = tuple(int(g) for g in enc.patch_embed.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]
        width = enc.embed_dim

        # Fixed sin-cos positions, as in the MAE paper; fine-tuning unfreezes them again.
        with torch.no_grad():
            enc.pos_embed.copy_(_sincos_with_cls(self.grid, width))
        enc.pos_embed.requires_grad_(False)

        self.decoder_embed = nn.Linear(width, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed", _sincos_with_cls(self.grid, decoder_dim), persistent=True
        )
        self.decoder_blocks = nn.Sequential(
            *[
                Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)
        self._init_decoder()
        plain_attention_on_cpu(self)  # the fused CPU kernel is the slow one at these lengths

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if name.startswith("decoder") and isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Tokens and positions skip weight decay (timm's create_optimizer_v2 reads this)."""
        return {"encoder.cls_token", "encoder.pos_embed", "mask_token"}

    # ------------------------------------------------------------------ patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, 3, H, W] -> patches [N, L, p*p*3] (row-major patches, pixel order p, q, c)."""
        p = self.patch_size
        n, c, h, w = imgs.shape
        if h % p or w % p:
            raise ValueError(f"image {h}x{w} is not divisible by the patch size {p}")
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """patches [N, L, p*p*3] -> imgs [N, 3, H, W] (the model's patch grid)."""
        p = self.patch_size
        gh, gw = self.grid
        n = x.shape[0]
        x = x.reshape(n, gh, gw, p, p, 3)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, 3, gh * p, gw * p)

    # ------------------------------------------------------------------ masking

    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random subset of exactly K tokens per sample.

        x: [N, L, D] -> (x_kept [N, K, D], mask [N, L] with 1 = removed, ids_restore [N, L]).
        """
        n, length, dim = x.shape
        keep = num_kept(length, mask_ratio)
        noise = torch.rand(n, length, device=x.device, generator=generator)  # [N, L]
        ids_shuffle = noise.argsort(dim=1)  # ascending: the first K are kept
        ids_restore = ids_shuffle.argsort(dim=1)
        ids_keep = ids_shuffle[:, :keep]  # [N, K]
        x_kept = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
        mask[:, :keep] = 0
        mask = mask.gather(1, ids_restore)  # back to patch order
        return x_kept, mask, ids_restore

    # ------------------------------------------------------------------ encoder / decoder

    def forward_encoder(
        self,
        imgs: torch.Tensor,
        mask_ratio: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: [N, 3, H, W] normalised -> (latent [N, 1+K, D], mask [N, L], ids_restore [N, L])."""
        enc = self.encoder
        x = enc.patch_embed(imgs)  # [N, L, D]
        x = x + enc.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)  # [N, K, D]
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)  # [N, 1, D]
        x = torch.cat([cls, x], dim=1)  # [N, 1+K, D]
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        x = enc.norm(x)
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [N, 1+K, D], ids_restore [N, L] -> pred [N, L, p*p*3]."""
        x = self.decoder_embed(latent)  # [N, 1+K, E]
        n, kept1, dim = x.shape
        length = ids_restore.shape[1]
        masks = self.mask_token.to(x.dtype).expand(n, length + 1 - kept1, -1)  # [N, L-K, E]
        tokens = torch.cat([x[:, 1:], masks], dim=1)  # [N, L, E], shuffled order
        tokens = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # patch order
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed  # [N, 1+L, E]
        x = self.decoder_blocks(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]  # drop cls: [N, L, p*p*3]

    # ------------------------------------------------------------------ loss

    def targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs [N, 3, H, W] -> reconstruction targets [N, L, p*p*3] (float32)."""
        target = self.patchify(imgs.float())
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error over the removed patches only.

        imgs [N, 3, H, W], pred [N, L, p*p*3], mask [N, L] (1 = removed) -> scalar.
        """
        per_patch = (pred.float() - self.targets(imgs)).pow(2).mean(dim=-1)  # [N, L]
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs [N, 3, H, W] normalised -> (loss, pred [N, L, p*p*3], mask [N, L])."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Prediction in image space with the visible patches pasted back: [N, 3, H, W].

        With norm_pix_loss the model predicts per-patch normalised pixels; they are shown with
        the true patch mean/std (for viewing only: it borrows statistics of the hidden patch).
        """
        patches = self.patchify(imgs.float())  # [N, L, ppc]
        pred = pred.float()
        if self.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        m = mask.float().unsqueeze(-1)
        return self.unpatchify(pred * m + patches * (1 - m))

    def encoder_config(self) -> dict[str, Any]:
        """JSON config of the encoder checkpoint (see `dermae.pretrain.train`)."""
        return {
            "kind": "vit_encoder",
            "arch": self.arch,
            "model_kwargs": dict(self.model_kwargs),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "mean": list(MEAN),
            "std": list(STD),
        }


def _sincos_with_cls(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions with a zero row for the cls token: [1, 1+L, dim]."""
    pos = build_sincos2d_pos_embed(list(grid), dim=dim)  # [L, dim]
    return torch.cat([torch.zeros(1, dim), pos], dim=0).unsqueeze(0)


def build_mae(cfg: MAEConfig, image_size: int) -> MaskedAutoencoder:
    arch, kwargs = resolve_vit(cfg.model)
    return MaskedAutoencoder(
        arch,
        image_size,
        kwargs,
        decoder_dim=cfg.decoder_dim,
        decoder_depth=cfg.decoder_depth,
        decoder_heads=cfg.decoder_heads,
        mask_ratio=cfg.mask_ratio,
        norm_pix_loss=cfg.norm_pix_loss,
    )


class MAETask(nn.Module):
    """Training task for the shared loop: batch["image"] in [0, 1] -> {"loss", "pred", "mask"}."""

    def __init__(self, model: MaskedAutoencoder, mean=MEAN, std=STD):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss, pred, mask = self.model(self.normalize(batch["image"]))
        return {"loss": loss, "pred": pred, "mask": mask}


__all__ = [
    "VIT_MODELS",
    "MAETask",
    "MaskedAutoencoder",
    "build_mae",
    "create_vit_encoder",
    "num_kept",
    "resolve_vit",
]
