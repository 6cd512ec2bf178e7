import numpy as np
import pytest

from dermae.classify.baseline import loss_setup, train_baseline
from dermae.classify.common import class_weights
from dermae.classify.model import load_classifier
from dermae.config import load_config
from tests.helpers.tiny_data import make_prepared


def test_class_weights_are_sqrt_inverse_frequency():
    targets = np.array([0] * 16 + [1] * 4 + [2] * 1)
    w = class_weights(targets, 3).numpy()
    assert w[1] / w[0] == pytest.approx(2.0)  # sqrt(16/4)
    assert w[2] / w[0] == pytest.approx(4.0)  # sqrt(16/1)
    assert w[targets].mean() == pytest.approx(1.0, rel=1e-6)


def test_loss_setup_options():
    targets = np.array([0, 0, 0, 1])
    weights, sampler = loss_setup("balanced_sampler", targets, 2)
    assert weights is None
    np.testing.assert_allclose(sampler, [1 / 3, 1 / 3, 1 / 3, 1.0])
    weights, sampler = loss_setup("ce", targets, 2)
    assert weights is None and sampler is None
    with pytest.raises(ValueError, match="unknown loss"):
        loss_setup("focal", targets, 2)


def test_tiny_baseline_learns_and_stores_val_thresholds(tmp_path):
    make_prepared(tmp_path, n_per_class=20, size=16)
    cfg = load_config(
        None,
        [
            "baseline.model=resnet10t",
            "baseline.train.max_steps=40",
            "baseline.train.batch_size=16",
            "baseline.train.lr=0.01",
            "baseline.train.eval_every=20",
            "baseline.augment=false",
        ],
    )
    model_dir = train_baseline(cfg, tmp_path)
    model, config = load_classifier(model_dir)
    assert config["class_names"] == ["mel", "nv", "bcc"]
    assert set(config["thresholds"]) == {"spec@0.90", "spec@0.95"}
    assert config["threshold"]["chosen_on"] == "val"
    history = (tmp_path / "baseline" / "train" / "metrics.jsonl").read_text()
    assert "val_balanced_accuracy" in history
    assert model.config["arch"] == "resnet10t"


def test_balanced_sampler_balances_hard_labelled_rows_and_keeps_soft_rows_at_their_share():
    from dermae.classify.baseline import loss_setup as setup

    # 3 real nv, 1 real df, 4 soft-label-only synthetic df images.
    targets = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    counted = np.array([True] * 4 + [False] * 4)
    _, sampler = setup("balanced_sampler", targets, 2, counted)
    p = sampler / sampler.sum()
    assert p[:4].sum() == pytest.approx(0.5)  # real rows keep their share of the draws ...
    assert p[:3].sum() == pytest.approx(p[3])  # ... balanced by class among themselves
    np.testing.assert_allclose(p[4:], 1 / 8)  # synthetic rows drawn uniformly
