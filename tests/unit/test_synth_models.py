"""Tiny VAE / UNet: conditioning, guidance, losses that fall, save_pretrained round trips."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel

from dermae.config import LDMConfig, VAEConfig
from dermae.synth.ldm import LDMTask, build_noise_scheduler, build_unet, dihedral, null_class_id
from dermae.synth.sample import generate, guided_prediction, make_sampler
from dermae.synth.vae import VAETask, build_vae, latent_shape, reconstruct

VAE_CFG = VAEConfig(block_out_channels=(8, 16), latent_channels=4)
LDM_CFG = LDMConfig(block_out_channels=(8, 16), attention_head_dim=8)
NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP spin-waits when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return build_vae(VAE_CFG, image_size=16)


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(1)
    return build_unet(LDM_CFG, latent_channels=4, latent_size=8, num_classes=NUM_CLASSES).eval()


def fixed_images(n: int = 8, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # Smooth images (a blob on a background) are learnable in a few steps.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(n, 2, generator=g) - 0.5
    radius = (xx[None] - centres[:, 0, None, None]) ** 2 + (
        yy[None] - centres[:, 1, None, None]
    ) ** 2
    blob = (radius < 0.25).float()[:, None]
    skin = torch.tensor([0.85, 0.6, 0.5]).view(1, 3, 1, 1)
    lesion = torch.rand(n, 3, 1, 1, generator=g) * 0.4
    return skin * (1 - blob) + lesion * blob


def test_build_vae_downsampling_and_latent_shape():
    vae = tiny_vae()
    assert latent_shape(vae, 16) == (4, 8, 8)
    z = vae.encode(fixed_images(2) * 2 - 1).latent_dist.mean
    assert z.shape == (2, 4, 8, 8)
    f8 = build_vae(VAEConfig(block_out_channels=(8, 8, 8, 8)), 64)
    assert latent_shape(f8, 64) == (4, 8, 8)
    with pytest.raises(ValueError, match="not divisible"):
        latent_shape(f8, 60)


def test_unet_has_null_class_and_conditioning_changes_output():
    unet = tiny_unet()
    assert unet.config.num_class_embeds == NUM_CLASSES + 1
    assert null_class_id(unet) == NUM_CLASSES
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = [
            unet(noise, 500, class_labels=torch.full((2,), c)).sample
            for c in range(NUM_CLASSES + 1)
        ]
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            assert (outs[a] - outs[b]).abs().max() > 1e-3, (a, b)
    # Same class, same noise: identical output (the difference above is the label's doing).
    with torch.no_grad():
        again = unet(noise, 500, class_labels=torch.full((2,), 0)).sample
    assert torch.equal(outs[0], again)


@pytest.mark.parametrize("guidance", [0.0, 1.0, 0.5, 3.0])
def test_guided_prediction_is_the_cfg_combination(guidance):
    unet = tiny_unet()
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        cond = unet(x, 300, class_labels=labels).sample
        uncond = unet(x, 300, class_labels=torch.full_like(labels, NUM_CLASSES)).sample
        got = guided_prediction(unet, x, 300, labels, guidance)
    expected = uncond + guidance * (cond - uncond)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    if guidance == 1.0:
        assert torch.equal(got, cond)
    if guidance == 0.0:
        assert torch.equal(got, uncond)


def test_generate_per_image_seeds_do_not_depend_on_batch():
    unet, vae = tiny_unet(), tiny_vae()
    sched = make_sampler("ddim", build_noise_scheduler(LDM_CFG))
    assert isinstance(sched, DDIMScheduler)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = generate(unet, vae, sched, torch.tensor([0, 2]), 2.0, 4, gens([11, 12]))
    alone = generate(unet, vae, sched, torch.tensor([2]), 2.0, 4, gens([12]))
    assert both.shape == (2, 3, 16, 16)
    assert both.min() >= 0.0 and both.max() <= 1.0
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
    other = generate(unet, vae, sched, torch.tensor([2]), 2.0, 4, gens([13]))
    assert (other - alone).abs().max() > 1e-3


def test_dihedral_permutes_each_latent():
    z = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    out = dihedral(z, torch.Generator().manual_seed(0))
    symmetries = []
    for t in (False, True):
        for h in (False, True):
            for v in (False, True):
                s = z.transpose(-1, -2) if t else z
                s = s.flip(-1) if h else s
                symmetries.append(s.flip(-2) if v else s)
    for i in range(2):
        assert any(torch.equal(out[i], s[i]) for s in symmetries)


def test_vae_loss_falls_on_a_fixed_batch():
    vae = tiny_vae()
    task = VAETask(vae, kl_weight=1e-6)
    batch = {"image": fixed_images(8)}
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    torch.manual_seed(0)
    first = task(batch)
    assert set(first) >= {"loss", "l1", "kl"}
    losses = []
    for _ in range(40):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def test_ldm_loss_falls_and_only_the_unet_trains():
    unet, vae = tiny_unet(), tiny_vae()
    vae.register_to_config(scaling_factor=1.0)
    task = LDMTask(unet, vae, build_noise_scheduler(LDM_CFG), label_dropout=0.1)
    assert not any(p.requires_grad for p in task.vae.parameters())
    vae_before = {k: v.clone() for k, v in vae.state_dict().items()}
    mean = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    batch = {"latent_mean": mean, "latent_std": torch.full_like(mean, 0.05)}
    batch["cond"] = torch.arange(16) % NUM_CLASSES

    def eval_loss() -> float:  # same noise and timesteps each time
        task.eval()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(123)
            value = sum(float(task(batch)["loss"]) for _ in range(8)) / 8
        task.train()
        return value

    before = eval_loss()
    opt = torch.optim.Adam(task.model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    task.train()
    for _ in range(60):
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
    for k, v in vae.state_dict().items():
        assert torch.equal(v, vae_before[k])


def test_ldm_task_encodes_images_when_not_cached():
    unet, vae = tiny_unet(), tiny_vae()
    vae.register_to_config(scaling_factor=2.0)
    task = LDMTask(unet, vae, build_noise_scheduler(LDM_CFG))
    images = fixed_images(4)
    torch.manual_seed(0)
    z = task.latents({"image": images})
    with torch.no_grad():
        dist = vae.encode(images * 2 - 1).latent_dist
    # A posterior sample scaled by the factor: within a few std of the scaled mean.
    assert z.shape == (4, 4, 8, 8)
    assert ((z / 2.0 - dist.mean).abs() <= 6 * dist.std + 1e-4).all()
    out = task({"image": images, "label": torch.tensor([0, 1, 2, 0])})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])


def test_label_dropout_uses_the_null_class():
    unet, vae = tiny_unet(), tiny_vae()
    seen = []
    original = unet.forward

    def spy(sample, t, class_labels=None, **kw):
        seen.append(class_labels.clone())
        return original(sample, t, class_labels=class_labels, **kw)

    unet.forward = spy
    task = LDMTask(unet, vae, build_noise_scheduler(LDM_CFG), label_dropout=0.5).train()
    mean = torch.zeros(400, 4, 8, 8)
    batch = {"latent_mean": mean, "latent_std": torch.ones_like(mean), "cond": torch.zeros(400)}
    torch.manual_seed(0)
    task(batch)
    dropped = (seen[-1] == NUM_CLASSES).float().mean()
    assert 0.4 < dropped < 0.6
    assert set(seen[-1].unique().tolist()) == {0, NUM_CLASSES}
    task.eval()
    task(batch)
    assert (seen[-1] == 0).all()  # no dropout outside training


def test_save_pretrained_round_trip_is_exact(tmp_path):
    vae, unet = tiny_vae(), tiny_unet()
    vae.register_to_config(scaling_factor=0.37)
    vae.save_pretrained(tmp_path / "vae")
    unet.save_pretrained(tmp_path / "unet")
    vae2 = AutoencoderKL.from_pretrained(tmp_path / "vae")
    unet2 = UNet2DModel.from_pretrained(tmp_path / "unet")
    assert vae2.config.scaling_factor == pytest.approx(0.37)
    assert unet2.config.num_class_embeds == NUM_CLASSES + 1
    images = fixed_images(2)
    vae.eval()  # train/eval pick different attention kernels (1e-7 apart)
    torch.testing.assert_close(reconstruct(vae2, images), reconstruct(vae, images), atol=0, rtol=0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = unet(x, 7, class_labels=torch.tensor([1, 3])).sample
        b = unet2(x, 7, class_labels=torch.tensor([1, 3])).sample
    assert torch.equal(a, b)
