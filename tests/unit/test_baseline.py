import numpy as np
import pytest

from dermae.classify.baseline import loss_setup, train_baseline
from dermae.classify.common import class_weights
from dermae.classify.model import load_classifier
from dermae.config import load_config
from tests.helpers.tiny_data import make_prepared, tiny_baseline_overrides


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
        tiny_baseline_overrides(40, "baseline.train.eval_every=20", "baseline.augment=false"),
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


def _seeds_config(run_dir, *extra):
    return load_config(
        None,
        [
            f"run_dir={run_dir}",
            "baseline.model=resnet10t",
            "baseline.loss=auto",
            "baseline.train.max_steps=6",
            "baseline.train.batch_size=16",
            "baseline.train.eval_every=6",
            "distill.teachers=[teacher, baseline]",
            *extra,
        ],
    )


def test_extra_baseline_seeds_share_the_chosen_recipe_and_differ_only_by_seed(tmp_path):
    import json

    import torch

    from dermae.classify.baseline import baseline_seed_dirs, train_baseline_seeds
    from dermae.distill.train import load_teacher

    make_prepared(tmp_path, n_per_class=12, size=16)
    cfg = _seeds_config(tmp_path, "distill.baseline_seeds=2")
    base_dir = train_baseline(cfg, tmp_path)
    chosen = json.loads((base_dir / "config.json").read_text())["loss"]
    out = train_baseline_seeds(cfg, tmp_path)
    record = json.loads((out / "members.json").read_text())
    assert [m["seed"] for m in record["members"]] == [1, 2]
    assert record["loss"] == chosen  # auto is not decided again, per seed
    dirs = baseline_seed_dirs(tmp_path, 2)
    assert [m["model"] for m in record["members"]] == [str(d) for d in dirs]
    base = load_classifier(base_dir)[0].state_dict()
    for folder in dirs:
        model, config = load_classifier(folder)
        assert config["loss"] == chosen and config["arch"] == "resnet10t"
        weights = model.state_dict()
        assert not torch.equal(weights["net.conv1.0.weight"], base["net.conv1.0.weight"])
    # `baseline` as a teacher brings its seeds: an ensemble of three, (b) first.
    teacher, config, path = load_teacher(cfg, tmp_path, ["baseline"], tmp_path / "ens" / "model")
    assert config["member_sources"] == [str(base_dir), *map(str, dirs)]
    # ... unless they are kept out of it: then (b) alone is the teacher.
    alone = _seeds_config(tmp_path, "distill.baseline_seeds=2", "distill.seeds_in_teacher=false")
    _, config, path = load_teacher(alone, tmp_path, ["baseline"], tmp_path / "ens1" / "model")
    assert path == base_dir and "member_sources" not in config
    # Nothing asked, nothing trained, and an empty record.
    none = train_baseline_seeds(_seeds_config(tmp_path), tmp_path)
    assert json.loads((none / "members.json").read_text())["members"] == []


def test_a_missing_extra_seed_names_its_folder(tmp_path):
    from dermae.distill.train import load_teacher

    make_prepared(tmp_path, n_per_class=12, size=16)
    cfg = _seeds_config(tmp_path, "distill.baseline_seeds=1")
    train_baseline(cfg, tmp_path)
    with pytest.raises(FileNotFoundError, match="seed_plus_1.*baseline_seeds"):
        load_teacher(cfg, tmp_path, ["baseline"], tmp_path / "ens" / "model")


def test_baseline_seeds_need_a_baseline_teacher():
    from dermae.config import ConfigError

    with pytest.raises(ConfigError, match="distill.baseline_seeds"):
        load_config(None, ["distill.teachers=[teacher]", "distill.baseline_seeds=1"])
    # Seeds kept out of the teacher need no baseline in it.
    kept_out = ["distill.teachers=[teacher]", "distill.baseline_seeds=1"]
    assert (
        load_config(None, [*kept_out, "distill.seeds_in_teacher=false"]).distill.baseline_seeds == 1
    )
    with pytest.raises(ConfigError, match="must not be negative"):
        load_config(None, ["distill.teachers=[teacher, baseline]", "distill.baseline_seeds=-1"])


def test_baseline_mixup_is_the_lam_weighted_pair_of_both_labels():
    import torch
    from torch.nn import functional as F

    from dermae.classify.common import ClassificationTask, batch_mixup

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    images, targets = torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    task = ClassificationTask(net, "label", mix=batch_mixup(0.4, 3)).train()
    torch.manual_seed(5)
    loss = task({"image": images, "label": targets})["loss"]
    torch.manual_seed(5)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    logits = net(lam * images + (1 - lam) * images.flip(0))
    expected = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(
        logits, targets.flip(0)
    )
    torch.testing.assert_close(loss, expected)
    assert 0 < lam < 1
    with torch.no_grad():  # evaluation sees the images unmixed
        task.eval()
        plain = task({"image": images, "label": targets})["loss"]
    torch.testing.assert_close(plain, F.cross_entropy(net(images), targets))


def test_mixup_off_leaves_the_training_fingerprint_as_before_it_existed():
    import dataclasses

    from dermae.classify.baseline import stage_settings
    from dermae.config import BaselineConfig, to_dict

    off = BaselineConfig()
    assert "mixup" not in stage_settings(off)  # checkpoints made before the key still resume
    assert stage_settings(off) == {k: v for k, v in to_dict(off).items() if k != "mixup"}
    assert stage_settings(dataclasses.replace(off, mixup=0.4))["mixup"] == 0.4
