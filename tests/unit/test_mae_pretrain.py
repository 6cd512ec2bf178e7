"""`pretrain(cfg, run_dir)`: data selection, encoder checkpoint, reconstruction grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from mae_fixtures import write_prepared
from PIL import Image
from safetensors.torch import load_file

from dermae.config import load_config
from dermae.data.prepared import load_prepared
from dermae.pretrain import train as train_module
from dermae.pretrain.mae import MAETask, resolve_vit
from dermae.pretrain.train import pretrain, pretrain_rows, save_reconstruction_grid


def micro_overrides(run_dir, synthetic_ratio=1.0):
    return [
        f"run_dir={run_dir}",
        "pretrain.model=vit_micro_patch4",
        "pretrain.decoder_dim=16",
        "pretrain.decoder_depth=1",
        "pretrain.decoder_heads=2",
        f"pretrain.synthetic_ratio={synthetic_ratio}",
        "pretrain.grid_images=4",
        "pretrain.train.batch_size=8",
        "pretrain.train.max_steps=6",
        "pretrain.train.lr=0.003",
        "pretrain.train.log_every=1",
        "pretrain.augment=false",
    ]


def micro_config(run_dir, synthetic_ratio=1.0):
    return load_config(overrides=micro_overrides(run_dir, synthetic_ratio))


def test_pretrain_rows_are_train_only_with_synthetic_by_ratio(tmp_path):
    write_prepared(tmp_path, synthetic=20)
    prepared = load_prepared(tmp_path)
    for ratio, n_synth in [(1.0, 20), (0.5, 10), (0.0, 0)]:
        rows = pretrain_rows(micro_config(tmp_path, ratio), prepared)
        assert set(rows["split"]) == {"train"}
        assert (rows["source"] == "real").sum() == 28
        assert (rows["source"] == "synthetic").sum() == n_synth


def test_pretrain_saves_timm_loadable_encoder_and_grid(tmp_path, monkeypatch):
    write_prepared(tmp_path, synthetic=6)
    seen = {}
    real_fit = train_module.fit

    def spy(task, dataset, cfg, out_dir, **kwargs):
        seen.update(dataset=dataset, out_dir=out_dir, model=kwargs["model"], task=task)
        return real_fit(task, dataset, cfg, out_dir, **kwargs)

    monkeypatch.setattr(train_module, "fit", spy)
    path = pretrain(micro_config(tmp_path), tmp_path)

    assert isinstance(seen["task"], MAETask) and seen["model"] is seen["task"].model
    rows = seen["dataset"].rows
    assert len(rows) == 28 + 6 and set(rows["split"]) == {"train"}  # no val/test
    log = [json.loads(line) for line in (tmp_path / "pretrain/train/metrics.jsonl").open()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]

    config = json.loads((path / "config.json").read_text())
    assert config["kind"] == "vit_encoder" and config["image_size"] == 16
    arch, kwargs = resolve_vit("vit_micro_patch4")
    assert (config["arch"], config["model_kwargs"]) == (arch, kwargs)
    state = load_file(str(path / "model.safetensors"))
    trained = seen["model"].encoder.state_dict()  # the saved encoder is the trained one
    assert state.keys() == trained.keys()
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    net = timm.create_model(arch, num_classes=7, img_size=16, **config["model_kwargs"])
    result = net.load_state_dict(state, strict=False)
    assert (result.missing_keys, result.unexpected_keys) == (["head.weight", "head.bias"], [])

    grid = np.asarray(Image.open(tmp_path / "pretrain" / "reconstructions.png"))
    assert grid.shape == (2 + 3 * 18, 2 + 4 * 18, 3)  # 3 rows x 4 val images of 16 px, pad 2


def test_grid_rows_show_original_masked_and_pasted_visible_patches(tmp_path):
    write_prepared(tmp_path)
    prepared = load_prepared(tmp_path)
    from dermae.pretrain.mae import build_mae

    task = MAETask(build_mae(micro_config(tmp_path).pretrain, 16))
    val = prepared.dataset(prepared.rows("val").head(3))
    images = torch.stack([val[i]["image"] for i in range(3)])
    out = save_reconstruction_grid(task, images, tmp_path / "g.png", seed=0)
    grid = torch.from_numpy(np.asarray(Image.open(out))).permute(2, 0, 1).float() / 255

    def cell(row, col):
        top, left = 2 + row * 18, 2 + col * 18
        return grid[:, top : top + 16, left : left + 16]

    for col in range(3):
        original, masked, recon = cell(0, col), cell(1, col), cell(2, col)
        torch.testing.assert_close(original, images[col], atol=1 / 255, rtol=0)
        shown = (masked - original).abs().sum(0) < 1e-6  # visible pixels
        hidden_share = 1 - shown.float().mean()
        assert 0.6 < hidden_share <= 0.75 + 1e-6  # 12 of 16 patches hidden (grey)
        # Reconstruction keeps the visible patches as they were.
        assert (recon - original).abs().sum(0)[shown].max() < 2 / 255


class Interrupt(Exception):
    pass


def test_pretrain_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    """Masks and crops draw from the RNG the loop checkpoints, so a resumed run is identical."""
    extra = ["pretrain.augment=true", "pretrain.train.max_steps=4", "pretrain.train.ckpt_every=2"]
    runs = {name: write_prepared(tmp_path / name, synthetic=6) for name in ("straight", "resumed")}
    configs = {
        name: load_config(overrides=[*micro_overrides(run), *extra]) for name, run in runs.items()
    }
    pretrain(configs["straight"], runs["straight"])

    real_fit = train_module.fit

    def stop_at_2(*args, **kwargs):
        def on_step(step):
            if step == 2:  # right after the step-2 checkpoint
                raise Interrupt

        return real_fit(*args, on_step=on_step, **kwargs)

    monkeypatch.setattr(train_module, "fit", stop_at_2)
    with pytest.raises(Interrupt):
        pretrain(configs["resumed"], runs["resumed"])
    steps_after_resume = []

    def record(*args, **kwargs):
        return real_fit(*args, on_step=steps_after_resume.append, **kwargs)

    monkeypatch.setattr(train_module, "fit", record)
    pretrain(configs["resumed"], runs["resumed"], resume=True)

    assert steps_after_resume == [3, 4]  # it did resume, not start over
    a, b = (load_file(str(r / "pretrain/encoder/model.safetensors")) for r in runs.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
