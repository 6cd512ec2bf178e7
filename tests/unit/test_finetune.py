"""Teacher fine-tuning: checked encoder transfer, linear probe, losses, layer decay, entry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mae_fixtures import write_prepared
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2

from dermae.classify import trainer as trainer_module
from dermae.classify.finetune import (
    TransferError,
    build_task,
    finetune,
    freeze_for_linear_probe,
    load_encoder,
    teacher_config,
)
from dermae.classify.model import build_classifier, load_classifier
from dermae.config import load_config
from dermae.data.prepared import load_prepared
from dermae.engine.checkpoint import save_model
from dermae.pretrain.mae import build_mae
from dermae.pretrain.train import encoder_dir


def micro_config(run_dir, *extra):
    return load_config(
        overrides=[
            f"run_dir={run_dir}",
            "pretrain.model=vit_micro_patch4",
            "pretrain.decoder_dim=16",
            "pretrain.decoder_depth=1",
            "pretrain.decoder_heads=2",
            "finetune.model=vit_micro_patch4",
            "finetune.train.batch_size=8",
            "finetune.train.max_steps=4",
            "finetune.train.eval_every=2",
            "finetune.train.ckpt_every=2",
            "finetune.train.log_every=1",
            "finetune.train.lr=0.003",
            "finetune.eval_batch_size=8",
            *extra,
        ]
    )


@pytest.fixture
def run_dir(tmp_path):
    """Prepared data + a (randomly initialised) MAE encoder checkpoint."""
    write_prepared(tmp_path, synthetic=7)
    torch.manual_seed(0)
    mae = build_mae(micro_config(tmp_path).pretrain, 16)
    save_model(encoder_dir(tmp_path), mae.encoder, mae.encoder_config())
    return tmp_path


def classifier_for(run_dir, *extra):
    cfg = micro_config(run_dir, *extra)
    return build_classifier(teacher_config(cfg.finetune, load_prepared(run_dir)))


@pytest.mark.parametrize(
    ("pool", "new", "dropped"),
    [
        ("token", ["head.bias", "head.weight"], []),
        (
            "avg",
            ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"],
            ["norm.bias", "norm.weight"],
        ),
    ],
)
def test_transfer_leaves_only_head_new(run_dir, pool, new, dropped):
    model = classifier_for(run_dir, f"finetune.global_pool={pool}")
    report = load_encoder(model.net, encoder_dir(run_dir))
    assert report == {"new": new, "dropped": dropped}
    encoder = load_file(str(encoder_dir(run_dir) / "model.safetensors"))
    state = model.net.state_dict()
    loaded = [k for k in encoder if k in state]
    assert all(torch.equal(state[k], encoder[k]) for k in loaded)
    assert set(loaded) | set(new) == set(state)


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_transfer_raises_on_any_other_key(run_dir, change):
    path = encoder_dir(run_dir) / "model.safetensors"
    state = load_file(str(path))
    if change == "extra":
        state["blocks.9.attn.qkv.weight"] = torch.zeros(3)
        key = "blocks.9.attn.qkv.weight"
    else:
        key = "blocks.1.mlp.fc2.bias"
        del state[key]
    save_file(state, str(path))
    model = classifier_for(run_dir, "finetune.global_pool=token")
    with pytest.raises(TransferError, match=key.replace(".", r"\.")):
        load_encoder(model.net, encoder_dir(run_dir))


def test_transfer_raises_on_other_image_size(run_dir):
    (encoder_dir(run_dir) / "config.json").write_text(json.dumps({"kind": "classifier"}))
    model = classifier_for(run_dir)
    with pytest.raises(TransferError, match="not a vit_encoder"):
        load_encoder(model.net, encoder_dir(run_dir))
    torch.manual_seed(0)
    mae = build_mae(micro_config(run_dir).pretrain, 32)  # other size -> other pos_embed
    save_model(encoder_dir(run_dir), mae.encoder, mae.encoder_config())
    with pytest.raises(TransferError, match="pos_embed"):
        load_encoder(model.net, encoder_dir(run_dir))


def test_transfer_names_config_mismatch(run_dir):
    cfg = micro_config(run_dir, "finetune.model=vit_tiny_patch8")
    prepared = load_prepared(run_dir)
    with pytest.raises(TransferError, match="set finetune.model to the pretrain.model"):
        build_task(cfg, prepared, np.zeros(3, dtype=int), run_dir)
    model = classifier_for(run_dir)  # same ViT: passes the config check
    assert load_encoder(model.net, encoder_dir(run_dir), model.config)["new"][-1] == "head.weight"


def test_linear_probe_trains_only_head_and_fc_norm(run_dir):
    cfg = micro_config(run_dir, "finetune.linear_probe=true")
    prepared = load_prepared(run_dir)
    ds = prepared.dataset(prepared.rows("train"))
    task, info = build_task(cfg, prepared, ds.labels, run_dir)
    net = task.model.net
    trainable = sorted(n for n, p in net.named_parameters() if p.requires_grad)
    assert trainable == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert info["new_keys"] == trainable
    assert sorted(freeze_for_linear_probe(net)) == trainable
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    batch = {"image": torch.stack([ds[i]["image"] for i in range(8)]), "label": ds.labels[:8]}
    batch["label"] = torch.as_tensor(batch["label"])
    for _ in range(3):
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    changed = sorted(k for k in after if not torch.equal(before[k], after[k]))
    assert changed == trainable


def test_mixup_only_in_training(run_dir):
    cfg = micro_config(run_dir, "finetune.mixup=0.8", "finetune.cutmix=1.0", "finetune.loss=ce")
    prepared = load_prepared(run_dir)
    ds = prepared.dataset(prepared.rows("train"))
    task, _ = build_task(cfg, prepared, ds.labels, run_dir)
    assert task.mix is not None and task.weights.numel() == 0
    images = torch.stack([ds[i]["image"] for i in range(8)])
    batch = {"image": images, "label": torch.as_tensor(ds.labels[:8])}
    task.eval()
    out = task(batch)
    torch.testing.assert_close(out["loss"], F.cross_entropy(task.model(images), batch["label"]))
    with pytest.raises(ValueError, match="even batch"):
        build_task(
            micro_config(run_dir, "finetune.mixup=0.8", "finetune.train.batch_size=7"),
            prepared,
            ds.labels,
            run_dir,
        )
    task.train()
    torch.manual_seed(0)
    np.random.seed(0)
    mixed = task(batch)["loss"]
    assert torch.isfinite(mixed) and not torch.allclose(mixed, out["loss"])


def test_layer_decay_groups_follow_vit_depth(run_dir):
    net = classifier_for(run_dir).net
    opt = create_optimizer_v2(net, "adamw", lr=1.0, layer_decay=0.5)
    scale_of = {}
    names = {id(p): n for n, p in net.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            scale_of[names[id(p)]] = group["lr_scale"]
    # micro ViT: 2 blocks -> layers embed(0), blocks(1, 2), head(3)
    assert scale_of["head.weight"] == 1.0
    assert scale_of["blocks.1.mlp.fc1.weight"] == 0.5
    assert scale_of["blocks.0.mlp.fc1.weight"] == 0.25
    assert scale_of["patch_embed.proj.weight"] == 0.125


def test_bad_options_name_the_key(run_dir):
    prepared = load_prepared(run_dir)
    labels = np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match="finetune.loss"):
        build_task(micro_config(run_dir, "finetune.loss=focal"), prepared, labels, run_dir)
    with pytest.raises(ValueError, match="finetune.init"):
        build_task(micro_config(run_dir, "finetune.init=imagenet"), prepared, labels, run_dir)
    with pytest.raises(ValueError, match="finetune.global_pool"):
        build_task(micro_config(run_dir, "finetune.global_pool=max"), prepared, labels, run_dir)


@pytest.mark.parametrize("init", ["mae", "scratch"])
def test_finetune_entry_selects_best_and_saves_teacher(run_dir, monkeypatch, init):
    seen = {}
    real_fit = trainer_module.fit

    def spy(task, dataset, cfg, out_dir, **kwargs):
        seen.update(task=task, dataset=dataset, **kwargs)
        return real_fit(task, dataset, cfg, out_dir, **kwargs)

    monkeypatch.setattr(trainer_module, "fit", spy)
    cfg = micro_config(run_dir, f"finetune.init={init}", "finetune.loss=balanced_sampler")
    path = finetune(cfg, run_dir)
    assert path == run_dir / "teacher" / "model"
    assert seen.get("model") is None  # the Classifier itself: it carries timm's layer groups
    assert seen["layer_decay"] == 0.75 and seen["select_metric"] == "balanced_accuracy"
    assert len(seen["dataset"]) == 28 + 7  # train real + synthetic
    labels = seen["dataset"].labels
    weights = seen["sampler_weights"]
    # Real rows balanced by class; synthetic rows drawn uniformly at their share (7 of 35), so
    # they cannot crowd out a class's real images.
    synthetic = (seen["dataset"].rows["source"] == "synthetic").to_numpy()
    real_mass = [weights[(labels == c) & ~synthetic].sum() for c in np.unique(labels[~synthetic])]
    assert np.allclose(real_mass, real_mass[0])
    assert np.allclose(weights[synthetic], weights[synthetic][0])
    assert weights[synthetic].sum() / weights.sum() == pytest.approx(7 / 35)

    log = [json.loads(line) for line in (run_dir / "teacher/train/metrics.jsonl").open()]
    scores = {r["step"]: r["val_balanced_accuracy"] for r in log if "val_balanced_accuracy" in r}
    assert sorted(scores) == [2, 4]
    model, config = load_classifier(path)
    best = config["best"]
    assert best["score"] == max(scores.values()) and scores[best["step"]] == best["score"]
    assert config["finetune"]["init"] == init
    assert ("encoder" in config["finetune"]) == (init == "mae")
    assert config["threshold"]["chosen_on"] == "val"
    trained = seen["task"].model.net.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.net.state_dict().items())


class Interrupt(Exception):
    pass


def test_finetune_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    extra = ("finetune.mixup=0.5", "finetune.cutmix=1.0")  # exercises numpy/python RNG too
    runs = {}
    for name in ("straight", "resumed"):
        run = tmp_path / name
        write_prepared(run, synthetic=7)
        torch.manual_seed(0)
        mae = build_mae(micro_config(run).pretrain, 16)
        save_model(encoder_dir(run), mae.encoder, mae.encoder_config())
        runs[name] = run
    finetune(micro_config(runs["straight"], *extra), runs["straight"])

    real_fit = trainer_module.fit

    def stop_at_2(*args, **kwargs):
        def on_step(step):
            if step == 2:  # after the step-2 checkpoint
                raise Interrupt

        return real_fit(*args, on_step=on_step, **kwargs)

    monkeypatch.setattr(trainer_module, "fit", stop_at_2)
    with pytest.raises(Interrupt):
        finetune(micro_config(runs["resumed"], *extra), runs["resumed"])
    steps_after_resume = []

    def record(*args, **kwargs):
        return real_fit(*args, on_step=steps_after_resume.append, **kwargs)

    monkeypatch.setattr(trainer_module, "fit", record)
    finetune(micro_config(runs["resumed"], *extra), runs["resumed"], resume=True)

    assert steps_after_resume == [3, 4]  # it did resume, not start over
    a = load_file(str(runs["straight"] / "teacher/model/model.safetensors"))
    b = load_file(str(runs["resumed"] / "teacher/model/model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [
        [json.loads(x) for x in (r / "teacher/train/metrics.jsonl").open()] for r in runs.values()
    ]
    assert logs[0] == logs[1]
