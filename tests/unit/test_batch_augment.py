"""Batched augmentation: each operation against torchvision's per-image one, the teacher view
drawn alike, and the option end to end in a classifier stage."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from dermae.classify.baseline import train_baseline
from dermae.config import ConfigError, load_config
from dermae.data.batch_augment import apply_params, augment_batch, draw_params
from tests.helpers.tiny_data import make_prepared, tiny_baseline_overrides


def _params(n: int, **changes: object) -> dict[str, torch.Tensor]:
    """Identity parameters, then the given changes (scalars broadcast to the batch)."""
    params = {
        "hflip": torch.zeros(n, dtype=torch.bool),
        "vflip": torch.zeros(n, dtype=torch.bool),
        "rotate": torch.zeros(n, dtype=torch.bool),
        "degrees": torch.zeros(n),
        "brightness": torch.ones(n),
        "contrast": torch.ones(n),
        "saturation": torch.ones(n),
        "hue": torch.zeros(n),
    }
    for key, value in changes.items():
        params[key] = torch.as_tensor(value).expand(n).clone()
    return params


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def test_identity_parameters_return_the_batch(images):
    torch.testing.assert_close(apply_params(images, _params(5)), images, atol=1e-5, rtol=0)


def test_flips_are_per_image(images):
    params = _params(5)
    params["hflip"][1] = True
    params["vflip"][3] = True
    out = apply_params(images, params)
    torch.testing.assert_close(out[1], images[1].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[3], images[3].flip(-2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0], images[0], atol=1e-5, rtol=0)


def test_a_quarter_turn_equals_torchvisions_rotation(images):
    out = apply_params(images, _params(5, rotate=True, degrees=90.0))
    expected = TF.rotate(images, 90.0, interpolation=TF.InterpolationMode.NEAREST)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("key", "factor", "reference"),
    [
        ("brightness", 1.08, TF.adjust_brightness),
        ("contrast", 0.92, TF.adjust_contrast),
        ("saturation", 1.1, TF.adjust_saturation),
        ("hue", 0.02, TF.adjust_hue),
        ("hue", -0.02, TF.adjust_hue),
    ],
)
def test_each_colour_operation_matches_torchvision_on_float_images(images, key, factor, reference):
    out = apply_params(images, _params(5, **{key: factor}))
    expected = torch.stack([reference(image, factor) for image in images])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_the_teacher_view_gets_the_same_draw():
    image = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    larger = F.interpolate(image, scale_factor=2, mode="nearest")
    torch.manual_seed(4)
    out = augment_batch({"image": image, "teacher_image": larger, "label": torch.arange(6)})
    torch.manual_seed(4)
    params = draw_params(6)
    assert torch.equal(out["label"], torch.arange(6))
    torch.testing.assert_close(out["image"], apply_params(image, params), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        out["teacher_image"], apply_params(larger, params), atol=1e-6, rtol=0
    )
    # Without rotation (nearest neighbour is not exact across resolutions) the teacher's view
    # is the student's at twice the pixels.
    params["rotate"][:] = False
    small, big = apply_params(image, params), apply_params(larger, params)
    torch.testing.assert_close(F.avg_pool2d(big, 2), small, atol=1e-5, rtol=0)


def test_draws_cover_their_ranges():
    params = draw_params(4000, torch.Generator().manual_seed(0))
    for key in ("hflip", "vflip", "rotate"):
        assert 0.45 < params[key].float().mean() < 0.55
    assert params["degrees"].abs().max() <= 180 and params["degrees"].abs().max() > 170
    for key in ("brightness", "contrast", "saturation"):
        assert params[key].min() >= 0.9 and params[key].max() <= 1.1
    assert params["hue"].abs().max() <= 0.02


def test_a_baseline_trains_with_batch_augmentation_and_records_it(tmp_path):
    make_prepared(tmp_path, n_per_class=20, size=16)
    cfg = load_config(None, tiny_baseline_overrides(30, "data.batch_augment=true"))
    train_baseline(cfg, tmp_path)
    saved = json.loads((tmp_path / "baseline" / "train" / "checkpoint" / "config.json").read_text())
    assert saved["recipe"]["batch_augment"] is True
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "baseline" / "train" / "metrics.jsonl").read_text().splitlines()
        if "loss" in line
    ]
    assert losses[-1] < losses[0]


def test_teacher_views_refuse_batch_augmentation():
    with pytest.raises(ConfigError, match="batch_augment"):
        load_config(None, ["distill.teacher_views=4", "data.batch_augment=true"])
