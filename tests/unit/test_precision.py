import warnings

import pytest
import torch

from dermae.config import ConfigError, load_config
from dermae.engine import precision
from dermae.engine.precision import autocast, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(precision, "_warned", set())

    return set_native


def test_auto_picks_bf16_only_where_native(cpu_bf16):
    cpu_bf16(True)
    assert resolve_precision("auto", CPU) == "bf16"
    cpu_bf16(False)
    assert resolve_precision("auto", CPU) == "no"
    assert resolve_precision("no", CPU) == "no"


def test_explicit_bf16_is_kept_but_warns_once_where_emulated(cpu_bf16):
    cpu_bf16(False)
    with pytest.warns(UserWarning, match="emulated.*mixed_precision: auto"):
        assert resolve_precision("bf16", CPU) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU) == "bf16"  # once per device type
    cpu_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU) == "bf16"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("fp8", CPU)


def test_autocast_follows_the_resolution(cpu_bf16):
    cpu_bf16(False)
    with autocast(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")
    cpu_bf16(True)
    with autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_config_names_a_bad_precision():
    with pytest.raises(ConfigError, match="baseline.train.mixed_precision.*fp8"):
        load_config(None, ["baseline.train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="sample.mixed_precision.*fp16"):
        load_config(None, ["sample.mixed_precision=fp16"])
    assert load_config(None, ["ldm.train.mixed_precision=auto"]).ldm.train.mixed_precision == "auto"


def test_training_says_which_precision_auto_chose(cpu_bf16, tmp_path, capsys):
    from dermae.config import TrainConfig
    from dermae.engine.loop import fit
    from tests.helpers.tiny_fit import PointsDataset, RegressionTask

    cpu_bf16(False)
    cfg = TrainConfig(max_steps=2, batch_size=8, mixed_precision="auto", log_every=1)
    result = fit(RegressionTask(), PointsDataset(), cfg, tmp_path / "auto", resume=False)
    assert result.step == 2
    assert "[train] mixed precision: no (auto)" in capsys.readouterr().out


def test_auto_keeps_depthwise_nets_in_fp32_on_a_cpu(cpu_bf16):
    import timm

    cpu_bf16(True)
    mobile = timm.create_model("mobilenetv3_small_100", num_classes=3)
    resnet = timm.create_model("resnet10t", num_classes=3)
    assert precision.mostly_depthwise(mobile) and not precision.mostly_depthwise(resnet)
    assert resolve_precision("auto", CPU, model=mobile) == "no"
    assert resolve_precision("auto", CPU, model=resnet) == "bf16"
    assert resolve_precision("bf16", CPU, model=mobile) == "bf16"  # asked for: honoured
    assert not precision.mostly_depthwise(torch.nn.Linear(3, 3))


def test_a_teachers_auto_precision_is_its_own(cpu_bf16):
    import timm

    from dermae.distill.task import teacher_scope

    cpu_bf16(True)
    mobile = timm.create_model("mobilenetv3_small_100", num_classes=3)
    resnet = timm.create_model("resnet10t", num_classes=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the student's autocast around it
        with teacher_scope(CPU, "auto", mobile):
            assert not torch.is_autocast_enabled("cpu")
        with teacher_scope(CPU, "auto", resnet):
            assert torch.is_autocast_enabled("cpu")
        with teacher_scope(CPU, "same", mobile):
            assert torch.is_autocast_enabled("cpu")  # left as the student has it
