import pytest

from dermae.config import Config, ConfigError, load_config, parse_override, save_config


def test_defaults_yaml_and_overrides_layer(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: runs/x\nbaseline:\n  model: resnet18\n  train:\n    lr: 1e-3\n")
    cfg = load_config(path, ["baseline.train.epochs=7", "data.image_size=32"])
    assert cfg.run_dir == "runs/x"
    assert cfg.baseline.model == "resnet18"
    assert cfg.baseline.train.lr == pytest.approx(1e-3)  # YAML 1.1 string "1e-3" accepted
    assert cfg.baseline.train.epochs == 7
    assert cfg.data.image_size == 32
    # Untouched keys keep the stage's own defaults, not the bare TrainConfig defaults.
    assert cfg.baseline.train.batch_size == Config().baseline.train.batch_size
    assert cfg.ldm.train.ema_decay == Config().ldm.train.ema_decay


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="baseline.train.lrr"):
        load_config(None, ["baseline.train.lrr=0.1"])
    path = tmp_path / "c.yaml"
    path.write_text("dataa: {}\n")
    with pytest.raises(ConfigError, match="'dataa'"):
        load_config(path)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="data.image_size.*int"):
        load_config(None, ["data.image_size=big"])
    with pytest.raises(ConfigError, match="baseline.augment.*bool"):
        load_config(None, ["baseline.augment=3"])


def test_tuple_fields_and_round_trip(tmp_path):
    cfg = load_config(None, ["vae.block_out_channels=[8, 16]", "evaluate.specificities=[0.8]"])
    assert cfg.vae.block_out_channels == (8, 16)
    assert cfg.evaluate.specificities == (0.8,)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_parse_override():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=true") == (["a"], True)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_data_root_from_environment(monkeypatch):
    monkeypatch.setenv("DERMAE_DATA", "/somewhere/ham")
    assert Config().data.root == "/somewhere/ham"


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"demo", "cpu-full", "paper-gpu", "smoke"}
    for path in configs:
        load_config(path)  # unknown or mistyped keys would raise


def test_the_claim_config_reuses_the_baseline_seeds_for_its_verdict():
    """cpu-full's (b) seeds are the baseline_seeds members (trained once, and independent
    judges of the synthetic images), so the two counts must agree."""
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "cpu-full.yaml")
    assert cfg.ablate.variants == ("a", "b", "c", "d", "e", "f")
    assert cfg.distill.baseline_seeds == cfg.ablate.seeds - 1 == 2


def test_teacher_precision_is_checked():
    assert load_config(None, ["distill.teacher_precision=auto"]).distill.teacher_precision == "auto"
    with pytest.raises(ConfigError, match="distill.teacher_precision.*'fp8'"):
        load_config(None, ["distill.teacher_precision=fp8"])


def test_a_bare_no_precision_means_fp32_not_false(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  teacher_precision: auto\n  train: {mixed_precision: no}\n")
    assert load_config(path).distill.train.mixed_precision == "no"
    assert load_config(None, ["distill.teacher_precision=no"]).distill.teacher_precision == "no"


def test_ablation_variants_that_swap_the_mae_teacher_need_one():
    with pytest.raises(ConfigError, match=r"ablate.variants.*\['e', 'f'\].*no 'teacher'"):
        load_config(None, ["distill.teachers=[baseline]", "ablate.variants=[b,d,e,f]"])
    load_config(None, ["distill.teachers=[teacher,baseline]", "ablate.variants=[b,d,e,f]"])
