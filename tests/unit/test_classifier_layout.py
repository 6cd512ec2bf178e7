"""Classifiers keep their convolution weights channels_last; the math and checkpoints do not
change with it."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from dermae.classify.model import (
    build_classifier,
    classifier_config,
    load_classifier,
    save_classifier,
)
from dermae.engine.checkpoint import MODEL_FILE

NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _config(arch: str = "resnet10t") -> dict:
    return classifier_config(arch, NAMES, ["akiec", "bcc", "mel"], 32)


def test_conv_weights_are_channels_last_and_logits_match_the_contiguous_net():
    torch.manual_seed(0)
    model = build_classifier(_config()).eval()
    convs = [m.weight for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # really another layout, not 1x1 only
    images = torch.rand(4, 3, 32, 32)
    plain = build_classifier(_config()).eval()
    plain.net.to(memory_format=torch.contiguous_format)
    plain.net.load_state_dict(model.net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images), rtol=1e-4, atol=1e-4)


def test_saved_weights_are_contiguous_and_reload_to_equal_logits(tmp_path):
    torch.manual_seed(1)
    model = build_classifier(_config("mobilenetv3_small_100")).eval()
    save_classifier(tmp_path / "m", model)
    tensors = load_file(str(tmp_path / "m" / MODEL_FILE))
    assert all(t.is_contiguous() for t in tensors.values())
    reloaded, _ = load_classifier(tmp_path / "m")
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), reloaded(images))
