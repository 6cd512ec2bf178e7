"""Several seeds per recipe: means over seeds, intervals that redraw seeds, the verdict."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from dermae.config import ConfigError, fingerprint_tree, load_config
from dermae.evaluate import ablation
from dermae.evaluate.ablation_text import ablation_markdown, seed_verdict, seeds_line
from dermae.evaluate.paired import paired_metric_fn
from dermae.evaluate.seeds import recipe_argument, seed_paired


def test_seed_paired_compares_means_over_seeds_and_redraws_seeds() -> None:
    k, n = 3, 60
    y = np.arange(n) % k
    right = np.eye(k)[y] * 0.9 + 0.1 / k
    first = np.tile(np.eye(k)[0] * 0.9 + 0.1 / k, (n, 1))
    metric_fn = paired_metric_fn([2], 15, np.arange(k))
    out = seed_paired(
        y,
        np.arange(n),
        {"ref": [first, first], "good": [right, right], "mixed": [right, first]},
        "ref",
        metric_fn,
        resamples=200,
        seed=0,
    )
    good = out["good - ref"]["balanced_accuracy"]
    assert good["diff"] == pytest.approx(1 - 1 / k)
    assert good["ci_lesion"] == pytest.approx([1 - 1 / k] * 2)  # every resample: 1 against 1/K
    assert good["ci_lesion_and_seed"] == pytest.approx([1 - 1 / k] * 2)  # the seeds are alike
    mixed = out["mixed - ref"]["balanced_accuracy"]
    assert mixed["diff"] == pytest.approx((1 - 1 / k) / 2)  # mean of the two seeds
    assert mixed["ci_lesion"] == pytest.approx([(1 - 1 / k) / 2] * 2)
    # Redrawing two seeds with replacement: both "first" (diff 0) or both "right" a quarter
    # of the time each, so the seed-aware interval spans 0 to 1 - 1/K.
    assert mixed["ci_lesion_and_seed"] == pytest.approx([0.0, 1 - 1 / k])
    assert "ref - ref" not in out


def test_seed_verdict_judges_by_the_interval_that_redraws_seeds():
    seeds = {
        "n": 3,
        "paired": {
            "d_dermae - b_simple_fix": {
                "balanced_accuracy": {
                    "diff": 0.03,
                    "ci_lesion": [0.01, 0.05],  # above zero for these models...
                    "ci_lesion_and_seed": [-0.01, 0.07],  # ...but not over seeds
                }
            },
            "x - b_simple_fix": {"balanced_accuracy": {"diff": 0.1, "ci_lesion_and_seed": None}},
            "teacher_ensemble - b_simple_fix": {
                "balanced_accuracy": {
                    "diff": -0.02,
                    "ci_lesion": [-0.04, -0.01],
                    "ci_lesion_and_seed": [-0.05, -0.001],
                }
            },
        },
        "models": {"d_dermae": ["d0", "d1", "d2"], "teacher_ensemble": ["t"]},
        "test_balanced_accuracy": {
            "b_simple_fix": [0.6, 0.62, None],
            "d_dermae": [0.65, 0.6, 0.61],
        },
    }
    first, second, teacher = seed_verdict(seeds).splitlines()
    # A teacher is one model: it is paired with (b)'s mean, and the line says so.
    assert teacher.startswith(
        "- teacher_ensemble - b_simple_fix, one model against (b)'s mean of 3: -0.020"
    )
    assert teacher.endswith("worse than (b)")
    assert first == (
        "- d_dermae - b_simple_fix, mean of 3 seeds each: +0.030 (lesions and seeds resampled "
        "-0.010 to +0.070; lesions only +0.010 to +0.050), not distinguishable from (b)"
    )
    assert "undefined" in second
    seeds["paired"]["d_dermae - b_simple_fix"]["balanced_accuracy"]["ci_lesion_and_seed"] = [
        0.005,
        0.06,
    ]
    assert seed_verdict(seeds).splitlines()[0].endswith("better than (b)")
    line = seeds_line(seeds)
    assert "0.600, 0.620, n/a" in line and "0.650, 0.600, 0.610" in line


def _marked(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_seed_models_reuse_baseline_seeds_and_train_the_rest(tmp_path, monkeypatch):
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path}",
            "seed=5",
            "ablate.seeds=3",
            "distill.baseline_seeds=1",
            "distill.teachers=[teacher,baseline]",
        ],
    )
    b_dir = _marked(tmp_path / "baseline" / "model", loss="weighted_ce")
    member = _marked(tmp_path / "baseline_seeds" / "seed_plus_1" / "model")
    _marked(tmp_path / "student" / "model")
    trained = []

    def fake_baseline(
        cfg_, run_dir, stage, stage_cfg, synthetic_ratio=0.0, resume=True, image_size=None
    ):
        trained.append(("b", stage, stage_cfg.train.seed, stage_cfg.loss))
        return _marked(run_dir / stage / "model")

    def fake_distill(cfg_, run_dir, stage="student", resume=True, **kwargs):
        trained.append(("d", stage, cfg_.distill.train.seed, cfg_.distill.loss))
        return _marked(run_dir / stage / "model")

    monkeypatch.setattr(ablation, "train_baseline", fake_baseline)
    monkeypatch.setattr(ablation, "distill", fake_distill)
    seeds = ablation._seed_models(cfg, tmp_path, b_dir, "weighted_ce", resume=True)
    assert seeds["b_simple_fix"] == [b_dir, member, tmp_path / "ablate/seeds/b_seed_plus_2/model"]
    assert seeds["d_dermae"][0] == tmp_path / "student" / "model"
    assert trained == [
        ("d", "ablate/seeds/d_seed_plus_1", 6, cfg.distill.loss),
        ("b", "ablate/seeds/b_seed_plus_2", 7, "weighted_ce"),  # (b)'s loss, not `auto`
        ("d", "ablate/seeds/d_seed_plus_2", 7, cfg.distill.loss),
    ]
    one = load_config(None, [f"run_dir={tmp_path}"])
    assert ablation._seed_models(one, tmp_path, b_dir, "weighted_ce", resume=True) == {}


def test_report_puts_the_verdict_over_seeds_first(tmp_path):
    from dermae.evaluate.summary import ablation_section

    seeds = {
        "n": 2,
        "paired": {},
        "test_balanced_accuracy": {"b_simple_fix": [0.6, 0.62], "d_dermae": [0.65, 0.6]},
    }
    summary = {
        "student_arch": "resnet10t",
        "split": "test",
        "verdict": "- d_dermae - b_simple_fix: +0.002 (-0.01 to +0.02), not distinguishable",
        "seeds": seeds,
        "seed_verdict": "- d_dermae - b_simple_fix, mean of 2 seeds each: +0.015 (...)",
        "notes": {},
        "table": [],
        "results": {},
        "paired_bootstrap": {},
    }
    (tmp_path / "ablate").mkdir()
    (tmp_path / "ablate" / "ablation.json").write_text(json.dumps(summary))
    paragraphs = ablation_section(tmp_path).paragraphs
    assert paragraphs[0].startswith("Over 2 seeds of (b) and of the DerMAE student")
    assert paragraphs[1].startswith("d_dermae - b_simple_fix, mean of 2 seeds each: +0.015")
    assert "0.650, 0.600" in paragraphs[2]
    markdown = ablation_markdown(summary)
    assert markdown.startswith("Verdict over seeds")
    assert markdown.index("mean of 2 seeds") < markdown.index("+0.002 (-0.01")


def test_seed_models_train_g_at_every_seed_with_the_students_mixup(tmp_path, monkeypatch):
    cfg = load_config(
        None,
        [f"run_dir={tmp_path}", "ablate.seeds=2", "ablate.variants=[b,d,g]", "distill.mixup=0.4"],
    )
    b_dir = _marked(tmp_path / "baseline" / "model", loss="weighted_ce")
    _marked(tmp_path / "student" / "model")
    g_dir = _marked(tmp_path / "ablate" / "g_mixup_no_kd" / "model")
    trained = []

    def fake_baseline(
        cfg_, run_dir, stage, stage_cfg, synthetic_ratio=0.0, resume=True, image_size=None
    ):
        trained.append((stage, stage_cfg.train.seed, stage_cfg.mixup))
        return _marked(run_dir / stage / "model")

    monkeypatch.setattr(ablation, "train_baseline", fake_baseline)
    monkeypatch.setattr(ablation, "distill", lambda c, r, stage, resume: _marked(r / stage))
    seeds = ablation._seed_models(cfg, tmp_path, b_dir, "weighted_ce", resume=True)
    assert seeds["g_mixup_no_kd"] == [g_dir, tmp_path / "ablate/seeds/g_seed_plus_1/model"]
    assert trained == [
        ("ablate/seeds/b_seed_plus_1", 1, 0.0),
        ("ablate/seeds/g_seed_plus_1", 1, 0.4),
    ]


def test_seed_models_train_c_at_every_seed_when_asked(tmp_path, monkeypatch):
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path}",
            "ablate.seeds=3",
            "ablate.variants=[b,c,d]",
            "ablate.seed_variants=[c]",
            "distill.synthetic_ratio=0.25",
        ],
    )
    b_dir = _marked(tmp_path / "baseline" / "model", loss="weighted_ce")
    _marked(tmp_path / "student" / "model")
    c_dir = _marked(tmp_path / "ablate" / "c_real_synth" / "model")
    trained = []

    def fake_baseline(
        cfg_, run_dir, stage, stage_cfg, synthetic_ratio=0.0, resume=True, image_size=None
    ):
        trained.append((stage, stage_cfg.train.seed, synthetic_ratio))
        return _marked(run_dir / stage / "model")

    monkeypatch.setattr(ablation, "train_baseline", fake_baseline)
    monkeypatch.setattr(ablation, "distill", lambda *a, **k: pytest.fail("(d) not asked for"))
    seeds = ablation._seed_models(cfg, tmp_path, b_dir, "weighted_ce", resume=True)
    assert set(seeds) == {"b_simple_fix", "c_real_synth"}
    assert seeds["c_real_synth"] == [
        c_dir,
        tmp_path / "ablate/seeds/c_seed_plus_1/model",
        tmp_path / "ablate/seeds/c_seed_plus_2/model",
    ]
    seed = cfg.distill.train.seed or 0  # (c)'s one-seed model trains at the student's seed
    assert [t for t in trained if "c_seed" in t[0]] == [
        ("ablate/seeds/c_seed_plus_1", seed + 1, 0.25),
        ("ablate/seeds/c_seed_plus_2", seed + 2, 0.25),
    ]
    with pytest.raises(ConfigError, match="ablate.seed_variants"):
        load_config(None, ["ablate.seed_variants=[e]"])
    assert "seed_variants" not in fingerprint_tree(load_config(None, []))["ablate"]


def test_a_recipe_argument_is_a_name_and_one_folder_per_seed() -> None:
    name, folders = recipe_argument("b128=runs/x/b/model,runs/x/seeds/b1/model,")
    assert name == "b128"
    assert folders == [Path("runs/x/b/model"), Path("runs/x/seeds/b1/model")]
    for bad in ("runs/x/b/model", "=runs/x", "b128="):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=folder"):
            recipe_argument(bad)
