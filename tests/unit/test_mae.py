"""Masked autoencoder: patches, masking, loss, gradients, learning, encoder transfer."""

from __future__ import annotations

import pytest
import timm
import torch

from dermae.config import MAEConfig
from dermae.data.transforms import normalize
from dermae.pretrain.mae import (
    VIT_MODELS,
    MAETask,
    MaskedAutoencoder,
    build_mae,
    num_kept,
    resolve_vit,
)

MICRO = "vit_micro_patch4"


def micro_mae(image_size: int = 16, **kwargs) -> MaskedAutoencoder:
    torch.manual_seed(0)
    arch, model_kwargs = resolve_vit(MICRO)
    defaults = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)
    return MaskedAutoencoder(arch, image_size, model_kwargs, **{**defaults, **kwargs})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_patchify_round_trip_and_layout():
    mae = micro_mae(image_size=16)  # patch 4 -> 4x4 grid
    imgs = torch.randn(2, 3, 16, 16, generator=gen())
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 16, 4 * 4 * 3)
    assert torch.equal(mae.unpatchify(patches), imgs)
    # Patch 5 is row 1, column 1; its pixels are stored (row, col, channel).
    block = imgs[:, :, 4:8, 4:8].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(patches[:, 5], block)


def test_random_masking_exact_count_per_sample_and_restore():
    mae = micro_mae(image_size=32)  # 8x8 = 64 patches
    x = torch.randn(5, 64, 7, generator=gen(1))
    for ratio, kept in [(0.75, 16), (0.5, 32), (0.6, 26), (0.0, 64)]:
        assert num_kept(64, ratio) == kept
        x_kept, mask, ids_restore = mae.random_masking(x, ratio, gen(2))
        assert x_kept.shape == (5, kept, 7)
        assert mask.sum(1).tolist() == [64 - kept] * 5  # exact count for every sample
        # Kept tokens are exactly the unmasked rows of x, in some order.
        for i in range(5):
            visible = x[i][mask[i] == 0]
            assert torch.equal(visible.sort(0).values, x_kept[i].sort(0).values)
        assert torch.equal(ids_restore.sort(1).values, torch.arange(64).expand(5, 64))
    _, mask, _ = mae.random_masking(x, 0.75, gen(3))
    assert len({tuple(m.tolist()) for m in mask}) == 5  # masks differ across samples
    with pytest.raises(ValueError, match="mask_ratio"):
        mae.random_masking(x, 1.0)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_only_counts_masked_patches(norm_pix):
    mae = micro_mae(norm_pix_loss=norm_pix)
    imgs = torch.randn(3, 3, 16, 16, generator=gen(4))
    loss, pred, mask = mae(imgs, generator=gen(5))
    # Hand computation: per-patch MSE, averaged over removed patches.
    target = mae.patchify(imgs)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6
        ).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(loss, per_patch[mask == 1].mean())

    # Changing the target's visible patches leaves the loss unchanged ...
    noise = mae.unpatchify(torch.randn_like(target) * (1 - mask).unsqueeze(-1))
    same = mae.forward_loss(imgs + 5 * noise, pred.detach(), mask)
    torch.testing.assert_close(same, mae.forward_loss(imgs, pred.detach(), mask))
    # ... and its gradient is zero on visible pixels, non-zero on hidden ones.
    target_imgs = imgs.clone().requires_grad_(True)
    mae.forward_loss(target_imgs, pred.detach(), mask).backward()
    grad = mae.patchify(target_imgs.grad).abs().sum(-1)  # [N, L]
    assert torch.all(grad[mask == 0] == 0)
    assert torch.all(grad[mask == 1] > 0)


def test_every_trainable_parameter_gets_a_gradient():
    mae = micro_mae()
    loss, _, _ = mae(torch.randn(4, 3, 16, 16, generator=gen(6)), generator=gen(7))
    loss.backward()
    trainable = {n: p for n, p in mae.named_parameters() if p.requires_grad}
    assert "mask_token" in trainable and "encoder.cls_token" in trainable
    no_grad = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    # Positions are fixed sin-cos during pre-training (encoder) or a buffer (decoder).
    assert not mae.encoder.pos_embed.requires_grad
    assert "decoder_pos_embed" in dict(mae.named_buffers())


def test_mae_loss_falls_on_fixed_batch():
    mae = micro_mae()
    task = MAETask(mae)
    # Smooth images: reconstructable from neighbours.
    base = torch.rand(8, 3, 4, 4, generator=gen(8))
    batch = {"image": torch.nn.functional.interpolate(base, size=16, mode="bilinear")}
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.75 * first, losses


def test_bf16_autocast_loss_is_float32_and_close():
    mae = micro_mae()
    imgs = torch.randn(4, 3, 16, 16, generator=gen(12))
    loss32, _, _ = mae(imgs, generator=gen(13))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, pred16, _ = mae(imgs, generator=gen(13))
    assert pred16.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()


def test_task_normalises_zero_one_images():
    mae = micro_mae()
    images = torch.rand(2, 3, 16, 16, generator=gen(9))
    torch.manual_seed(1)
    out = MAETask(mae)({"image": images})
    torch.manual_seed(1)
    loss, pred, mask = mae(normalize(images))
    assert set(out) == {"loss", "pred", "mask"}
    torch.testing.assert_close(out["loss"], loss)
    assert torch.equal(out["mask"], mask)


def test_encoder_is_a_timm_vit_with_same_computation():
    mae = micro_mae()
    arch, kwargs = resolve_vit(MICRO)
    clf = timm.create_model(arch, pretrained=False, num_classes=7, img_size=16, **kwargs)
    result = clf.load_state_dict(mae.encoder.state_dict(), strict=False)
    assert result.missing_keys == ["head.weight", "head.bias"]
    assert result.unexpected_keys == []
    mae.eval()
    clf.eval()
    imgs = torch.randn(2, 3, 16, 16, generator=gen(10))
    # With nothing masked the encoder sees every patch (shuffled): its cls output must equal
    # timm's own forward, attention being order-independent once positions are added.
    latent, mask, _ = mae.forward_encoder(imgs, 0.0, gen(11))
    assert mask.sum() == 0
    torch.testing.assert_close(latent[:, 0], clf.forward_features(imgs)[:, 0], atol=1e-5, rtol=1e-5)


def test_registry_and_config():
    assert resolve_vit("vit_huge_patch14") == ("vit_huge_patch14_224", {})
    assert resolve_vit("vit_tiny_patch8") == ("vit_tiny_patch16_224", {"patch_size": 8})
    assert set(VIT_MODELS) >= {"vit_tiny_patch8", "vit_small_patch8", "vit_base_patch16"}
    with pytest.raises(ValueError, match="unknown ViT 'resnet18'"):
        resolve_vit("resnet18")
    cfg = MAEConfig(model=MICRO, decoder_dim=16, decoder_depth=1, decoder_heads=2, mask_ratio=0.5)
    mae = build_mae(cfg, image_size=32)
    assert mae.num_patches == 64 and mae.patch_size == 4 and mae.mask_ratio == 0.5
    assert mae.encoder_config() == {
        "kind": "vit_encoder",
        "arch": "vit_tiny_patch16_224",
        "model_kwargs": VIT_MODELS[MICRO][1],
        "image_size": 32,
        "patch_size": 4,
        "mean": list(mae.encoder_config()["mean"]),
        "std": list(mae.encoder_config()["std"]),
    }
