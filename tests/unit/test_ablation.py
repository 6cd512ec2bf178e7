"""The ablation's pieces: ROC sensitivity, the verdict, the simple-fix choice, the synth filter."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from dermae.classify import baseline as baseline_module
from dermae.classify.baseline import chosen_loss, train_baseline
from dermae.config import load_config
from dermae.data.prepared import ACCEPTED_FILE, accepted_synthetic
from dermae.evaluate.ablation_text import verdict
from dermae.evaluate.paired import roc_sensitivity_at
from dermae.synth.quality import write_filter


def test_roc_sensitivity_is_read_where_the_roc_reaches_the_specificity():
    # Two classes, class 1 malignant; risk = p[:, 1].
    benign_risk = np.linspace(0.0, 0.9, 10)  # 90th percentile ("higher") = 0.9
    malignant_risk = np.array([0.95, 0.92, 0.5, 0.1])
    risk = np.concatenate([benign_risk, malignant_risk])
    probs = np.column_stack([1 - risk, risk])
    y = np.array([0] * 10 + [1] * 4)
    assert roc_sensitivity_at(0.9, [1])(y, probs) == pytest.approx(0.5)
    assert roc_sensitivity_at(0.9, [1])(np.zeros(14, int), probs) is None


def test_verdict_reads_the_paired_interval():
    comparisons = {
        "d - b": {"balanced_accuracy": {"diff": 0.06, "ci": (0.01, 0.11)}},
        "a - b": {"balanced_accuracy": {"diff": -0.1, "ci": (-0.15, -0.05)}},
        "c - b": {"balanced_accuracy": {"diff": 0.01, "ci": (-0.02, 0.04)}},
        "e - b": {"balanced_accuracy": {"diff": 0.01, "ci": (None, None)}},
    }
    lines = verdict(comparisons).splitlines()
    assert lines[0] == "- d - b: +0.060 (+0.010 to +0.110), better than (b)"
    assert lines[1].endswith("worse than (b)")
    assert lines[2].endswith("not distinguishable from (b)")
    assert "undefined" in lines[3]


def _fake_trained(run_dir, scores):
    def fake(cfg, run_dir_, stage, stage_cfg, synthetic_ratio=0.0, resume=True, image_size=None):
        folder = run_dir / stage / "model"
        folder.mkdir(parents=True)
        best = {"score": scores[stage_cfg.loss]}
        (folder / "config.json").write_text(json.dumps({"loss": stage_cfg.loss, "best": best}))
        return folder

    return fake


def test_auto_simple_fix_keeps_the_better_loss_on_validation(tmp_path, monkeypatch):
    scores = {"weighted_ce": 0.41, "balanced_sampler": 0.47}
    monkeypatch.setattr(baseline_module, "train_baseline", _fake_trained(tmp_path, scores))
    saved = {}

    def fake_load(folder):
        return "model", json.loads((folder / "config.json").read_text())

    def fake_save(folder, model, config):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config))
        saved.update(config)
        return folder

    monkeypatch.setattr(baseline_module, "load_classifier", fake_load)
    monkeypatch.setattr(baseline_module, "save_classifier", fake_save)
    cfg = load_config(None, ["baseline.loss=auto", f"run_dir={tmp_path}"])
    folder = train_baseline(cfg, tmp_path)  # the real entry: it dispatches on loss=auto
    assert folder == tmp_path / "baseline" / "model"
    assert saved["loss"] == "balanced_sampler"
    assert saved["simple_fix"]["val_balanced_accuracy"] == scores
    assert chosen_loss(tmp_path, "baseline") == "balanced_sampler"
    assert chosen_loss(tmp_path, "ce") == "ce"


def test_filter_keeps_recognised_images_that_are_no_near_copies(tmp_path):
    (tmp_path / "synthetic").mkdir()
    table = pd.DataFrame(
        {
            "image_id": ["s0", "s1", "s2", "s3"],
            "class": ["mel", "mel", "bcc", "bcc"],
            "near_copy_feature": [False, True, False, False],
            "near_copy_pixel": [False, False, False, True],
        }
    )
    fidelity = np.array([True, True, False, True])
    report = write_filter("classifier", tmp_path, table, fidelity)
    assert report["accepted"] == 1 and report["total"] == 4
    assert report["per_class"]["mel"] == {"accepted": 1, "total": 2, "rate": 0.5}
    assert report["per_class"]["bcc"]["rate"] == 0.0
    synth = pd.DataFrame({"image_id": ["s0", "s1", "s2", "s3"], "x": range(4)})
    assert accepted_synthetic(tmp_path, synth)["image_id"].tolist() == ["s0"]
    with pytest.raises(ValueError, match="no verdict"):
        accepted_synthetic(tmp_path, pd.DataFrame({"image_id": ["s9"]}))
    assert write_filter("none", tmp_path, table, fidelity) == {"kind": "none"}
    assert not (tmp_path / "synthetic" / ACCEPTED_FILE).exists()
    assert len(accepted_synthetic(tmp_path, synth)) == 4


def test_size_line_names_the_teacher_members():
    from dermae.evaluate.ablation_text import size_line

    small = {"arch": "resnet10t", "parameters": 4.9e6, "flops_per_image": 1.8e8}
    teacher = {"arch": "ensemble", "parameters": 20.1e6, "flops_per_image": 1.23e9}
    members = ["teacher/model", "baseline/model", "baseline_seeds/seed_plus_1/model"]
    line = size_line({"student": small, "teacher": {**teacher, "members": members}})
    assert line.startswith(
        "Teacher ensemble of 3 (teacher/model, baseline/model, baseline_seeds/seed_plus_1/model): "
        "20.1 M parameters, 1.23 GFLOPs per image; student resnet10t: 4.9 M, 0.18 GFLOPs."
    )
    one = size_line({"student": small, "teacher": {**teacher, "arch": "vit"}})
    assert one.startswith("Teacher vit: 20.1 M")  # older records have no member list
    assert "works at" not in one
    sized = {"student": {**small, "image_size": 64}}
    sized["teacher"] = {**teacher, "image_size": 128, "view": "its own resolution"}
    assert size_line(sized).endswith(
        "The teacher works at 128 px (its own resolution), the student at 64 px."
    )


def test_variant_g_is_b_with_the_students_mixup_and_no_teacher(tmp_path, monkeypatch):
    from dermae.evaluate import ablation
    from tests.helpers.tiny_data import make_prepared

    make_prepared(tmp_path, n_per_class=2)
    (tmp_path / "baseline" / "model").mkdir(parents=True)
    (tmp_path / "baseline" / "model" / "model.safetensors").write_bytes(b"")
    (tmp_path / "baseline" / "model" / "config.json").write_text(json.dumps({"loss": "ce"}))
    trained = {}

    def fake_baseline(cfg_, run_dir, stage, stage_cfg, synthetic_ratio=0.0, resume=True, **kw):
        trained[stage] = stage_cfg
        return run_dir / stage / "model"

    monkeypatch.setattr(ablation, "train_baseline", fake_baseline)
    base = [f"run_dir={tmp_path}", "baseline.loss=ce", "distill.loss=baseline"]
    cfg = load_config(None, [*base, "ablate.variants=[b,g]", "distill.mixup=0.4"])
    models, notes = ablation._variant_models(cfg, tmp_path, resume=True)
    recipe = ablation.student_recipe(cfg, "ce")
    assert trained["ablate/g_mixup_no_kd"] == dataclasses.replace(recipe, mixup=0.4)
    assert models["g_mixup_no_kd"] == tmp_path / "ablate/g_mixup_no_kd/model"
    assert any("variant (g)" in d for d in notes["like_for_like"])

    cfg = load_config(None, [*base, "ablate.variants=[b,g]"])
    models, notes = ablation._variant_models(cfg, tmp_path, resume=True)
    assert "g_mixup_no_kd" not in models and "distill.mixup=0" in notes["g_mixup_no_kd"]


def test_variants_without_a_teacher_train_at_the_students_resolution(tmp_path, monkeypatch):
    from dermae.evaluate import ablation
    from tests.helpers.tiny_data import make_prepared

    make_prepared(tmp_path, n_per_class=2, size=16)
    (tmp_path / "baseline" / "model").mkdir(parents=True)
    (tmp_path / "baseline" / "model" / "model.safetensors").write_bytes(b"")
    (tmp_path / "baseline" / "model" / "config.json").write_text(json.dumps({"loss": "ce"}))
    sizes = {}

    def fake_baseline(cfg_, run_dir, stage, stage_cfg, synthetic_ratio=0.0, resume=True, **kw):
        sizes[stage] = kw.get("image_size")
        folder = run_dir / stage / "model"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"loss": stage_cfg.loss}))
        return folder

    monkeypatch.setattr(ablation, "train_baseline", fake_baseline)
    base = [f"run_dir={tmp_path}", "data.image_size=16", "baseline.loss=ce"]
    # The student's recipe is the baseline's, so at the data's size (b) is the baseline itself.
    same = [*base, "distill.loss=baseline", "ablate.variants=[a,b]"]
    models, _ = ablation._variant_models(load_config(None, same), tmp_path, resume=True)
    assert models["b_simple_fix"] == tmp_path / "baseline" / "model"
    assert sizes == {"ablate/a_real_ce": None}
    # At another size (b) is trained again, at the student's pixels, like (a) and (g).
    sizes.clear()
    other = [*same, "distill.image_size=32", "distill.synthetic_ratio=0", "distill.mixup=0.4"]
    cfg = load_config(None, [*other, "ablate.variants=[a,b,g]"])
    models, _ = ablation._variant_models(cfg, tmp_path, resume=True)
    assert models["b_simple_fix"] == tmp_path / "ablate/b_simple_fix/model"
    assert sizes == {f"ablate/{v}": 32 for v in ("b_simple_fix", "a_real_ce", "g_mixup_no_kd")}
