"""ViTs run timm's plain attention on a CPU: every attention module is switched, and logits,
losses and gradients equal the fused kernel's up to float rounding."""

from __future__ import annotations

import pytest
import torch

from dermae.classify.model import build_classifier, classifier_config
from dermae.config import MAEConfig
from dermae.engine.attention import plain_attention_on_cpu
from dermae.pretrain.mae import build_mae

NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _vit_classifier() -> torch.nn.Module:
    config = classifier_config("vit_tiny_patch16_224", NAMES, ["mel"], 32, dict(TINY_VIT))
    return build_classifier(config)


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "fused_attn")]


def _set_fused(model: torch.nn.Module, fused: bool) -> None:
    for module in _attention_modules(model):
        module.fused_attn = fused


def test_classifier_vit_uses_plain_attention_with_the_fused_kernels_logits_and_grads():
    torch.manual_seed(0)
    model = _vit_classifier().train()
    modules = _attention_modules(model)
    assert len(modules) == TINY_VIT["depth"]
    assert all(m.fused_attn is False for m in modules)

    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 5, 6])
    results = {}
    for fused in (True, False):
        _set_fused(model, fused)
        model.zero_grad()
        logits = model(images)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[fused] = (logits.detach(), grads)
    torch.testing.assert_close(results[False][0], results[True][0], atol=1e-5, rtol=1e-5)
    for plain, fused in zip(results[False][1], results[True][1], strict=True):
        torch.testing.assert_close(plain, fused, atol=1e-5, rtol=1e-4)


def test_mae_switches_encoder_and_decoder_and_keeps_its_loss():
    torch.manual_seed(0)
    mae = build_mae(MAEConfig(model="vit_tiny_patch8", decoder_depth=1), 32)
    modules = _attention_modules(mae)
    assert len(modules) == len(mae.encoder.blocks) + len(mae.decoder_blocks)
    assert all(m.fused_attn is False for m in modules)

    images = torch.rand(2, 3, 32, 32)
    losses = {}
    for fused in (True, False):
        _set_fused(mae, fused)
        generator = torch.Generator().manual_seed(1)  # the same patches hidden both times
        losses[fused] = mae(images, 0.75, generator)[0].detach()
    torch.testing.assert_close(losses[False], losses[True], atol=1e-6, rtol=1e-5)


def test_a_gpu_machine_keeps_the_fused_kernel(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = _vit_classifier()
    assert all(m.fused_attn is True for m in _attention_modules(model))
    assert plain_attention_on_cpu(model) == 0


def test_a_net_without_attention_is_left_alone():
    cnn = build_classifier(classifier_config("resnet10t", NAMES, ["mel"], 32))
    assert plain_attention_on_cpu(cnn) == 0
