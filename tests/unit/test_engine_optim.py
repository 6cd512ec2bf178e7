"""Optimizer settings, timm parameter groups through `Classifier`, checkpoint keys, threads."""

import dataclasses

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2
from torch import nn

from dermae.classify.model import build_classifier, classifier_config
from dermae.config import TrainConfig, load_config
from dermae.engine import threads
from dermae.engine.loop import fit
from tests.helpers.tiny_fit import PointsDataset, RegressionTask

VIT = "vit_tiny_patch16_224"
VIT_KWARGS = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _vit():
    torch.manual_seed(0)
    return build_classifier(classifier_config(VIT, ["a", "b", "c"], ["a"], 16, VIT_KWARGS))


class ImageTask(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        logits = self.model(batch["image"])
        return {"loss": nn.functional.cross_entropy(logits, batch["label"])}


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 16, 16, generator=g), "label": torch.tensor(i % 3)}


def _group_of(optimizer, param):
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_mae_pretraining_defaults_to_the_mae_betas():
    cfg = load_config(None, [])
    assert cfg.pretrain.train.betas == (0.9, 0.95)
    assert cfg.baseline.train.betas == (0.9, 0.999)
    assert load_config(None, ["pretrain.train.lr=0.1"]).pretrain.train.betas == (0.9, 0.95)
    assert load_config(None, ["pretrain.train.betas=[0.8, 0.9]"]).pretrain.train.betas == (
        0.8,
        0.9,
    )


@pytest.mark.parametrize(
    "opt, key, expected", [("adamw", "betas", [0.9, 0.95]), ("sgd", "momentum", 0.9)]
)
def test_fit_builds_the_configured_optimizer(tmp_path, opt, key, expected):
    cfg = TrainConfig(
        max_steps=2, ckpt_every=1, batch_size=8, opt=opt, betas=(0.9, 0.95), weight_decay=0.01
    )

    class Stopped(Exception):
        pass

    def stop_after_first_checkpoint(step: int) -> None:
        raise Stopped  # an unfinished training keeps its optimizer state

    with pytest.raises(Stopped):
        fit(
            RegressionTask(),
            PointsDataset(),
            cfg,
            tmp_path,
            desc="t",
            on_step=stop_after_first_checkpoint,
        )
    saved = torch.load(tmp_path / "checkpoint" / "training_state" / "optimizer.pt")
    group = saved["param_groups"][0]
    value = list(group[key]) if key == "betas" else group[key]
    assert value == expected
    assert opt != "sgd" or "betas" not in group  # timm drops betas for optimizers without


def test_classifier_vit_gets_no_weight_decay_on_pos_embed_and_cls_token():
    model = _vit()
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    assert _group_of(optimizer, model.net.pos_embed)["weight_decay"] == 0.0
    assert _group_of(optimizer, model.net.cls_token)["weight_decay"] == 0.0
    assert _group_of(optimizer, model.net.blocks[0].attn.qkv.weight)["weight_decay"] == 0.05


def test_layer_decay_through_the_classifier_matches_the_timm_net():
    model = _vit()
    wrapped = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    inner = create_optimizer_v2(model.net, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)

    def scales(optimizer):
        return {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}

    assert scales(wrapped) == scales(inner)
    assert len(set(scales(wrapped).values())) == 4  # embeddings, 2 blocks, head
    assert _group_of(wrapped, model.net.pos_embed)["lr_scale"] == 0.5**3
    assert _group_of(wrapped, model.net.head.weight)["lr_scale"] == 1.0


def test_classifier_checkpoints_have_timm_keys_and_base_lr_is_logged(tmp_path):
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, log_every=1, warmup_steps=1)
    plain = fit(ImageTask(_vit()), Images(), cfg, tmp_path / "plain", desc="t")
    decayed = fit(ImageTask(_vit()), Images(), cfg, tmp_path / "ld", layer_decay=0.5, desc="t")
    assert [r["lr"] for r in decayed.history] == [r["lr"] for r in plain.history]
    # Group 0 holds the embeddings at lr x 0.5**3; the log shows the schedule's own lr.
    assert decayed.history[0]["lr"] == plain.history[0]["lr"] > 1e-4
    task = ImageTask(_vit())
    fit(task, Images(), cfg, tmp_path / "net", model=task.model.net, desc="t")
    keys = {
        name: set(load_file(str(tmp_path / name / "checkpoint" / "model.safetensors")))
        for name in ("plain", "ld", "net")
    }
    # One key format whether the loop trained the Classifier or its timm net: no "net." prefix.
    assert keys["plain"] == keys["ld"] == keys["net"] == set(task.model.net.state_dict())
    fresh = timm.create_model(VIT, num_classes=3, img_size=16, **VIT_KWARGS)
    weights = load_file(str(tmp_path / "ld" / "checkpoint" / "model.safetensors"))
    fresh.load_state_dict(weights)  # strict: loads straight into timm


def test_threads_follow_config_then_env_then_cgroup(tmp_path, monkeypatch):
    for name in (threads.THREADS_ENV, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert threads.cgroup_cpus(quota) == 1.5
    quota.write_text("max 100000\n")
    assert threads.cgroup_cpus(quota) is None
    assert threads.cgroup_cpus(tmp_path / "absent") is None

    real_runnable_others = threads.runnable_others
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 4)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 2.5)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.5, 0.5))
    assert threads.resolve_threads(0)[0] == 2  # quota 2.5 CPUs -> 2 threads
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.2, 0.5, 0.5))
    monkeypatch.setattr(threads, "runnable_others", lambda: 1)
    assert threads.resolve_threads(0)[0] == 1  # one core busy elsewhere: no thread waits on it
    monkeypatch.setattr(threads, "runnable_others", lambda: 0)
    assert threads.resolve_threads(0)[0] == 2  # the load was a command that has just ended
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.20 0.50 0.50 3/120 4242\n")
    assert real_runnable_others(loadavg, samples=1) == 2
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.5, 0.5))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.resolve_threads(0)[0] == 1  # two processes share them
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve_threads(0)[0] == 3
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    assert threads.resolve_threads(0) == (1, threads.THREADS_ENV)
    assert threads.resolve_threads(4) == (4, "config threads")
    monkeypatch.setenv(threads.THREADS_ENV, "two")
    with pytest.raises(ValueError, match="DERMAE_THREADS"):
        threads.resolve_threads(0)


def test_threads_are_applied_once_by_the_cli(tmp_path, monkeypatch):
    from dermae import cli

    before = torch.get_num_threads()
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    try:
        args = cli.build_parser().parse_args(["train", "--set", "threads=2", "--run-dir", "x"])
        assert cli._load(args).threads == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_config_threads_key_defaults_to_auto():
    assert load_config(None, []).threads == 0
    assert dataclasses.replace(load_config(None, []), threads=1).threads == 1
