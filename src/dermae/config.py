"""Typed configuration: one frozen dataclass per stage, YAML files, `--set` overrides.

Precedence: dataclass defaults < YAML file < command-line `--set key=value`.
Unknown or mistyped keys raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA_ENV_VAR = "DERMAE_DATA"
DEFAULT_DATA_ROOT = "../shared/data/ham10000"


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


def default_data_root() -> str:
    return os.environ.get(DATA_ENV_VAR, DEFAULT_DATA_ROOT)


@dataclass(frozen=True)
class DataConfig:
    root: str = field(default_factory=default_data_root)
    layout: str = "auto"  # auto | ham10000 | isic | folders
    image_size: int = 64  # square working resolution of the image cache
    val_frac: float = 0.1
    test_frac: float = 0.2
    split_seed: int = 0
    skip_bad: bool = False
    group_missing_lesions: str = "error"  # error | image (a blank lesion_id is its own lesion)
    allow_outside_root: bool = False  # read image paths that resolve outside `root`
    limit: int = 0  # >0: keep a stratified subset of this many lesions (smoke runs)
    label: str = "diagnosis"  # diagnosis (7 classes) | malignant (2 classes)
    include_synthetic: bool = True  # later stages read synthetic rows when present
    synthetic_ratio: float = 1.0  # fraction of available synthetic images used
    num_workers: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Options of the one training loop, shared by every stage."""

    epochs: int = 1
    max_steps: int = 0  # >0 overrides epochs
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    warmup_steps: int = 0
    grad_accum: int = 1
    clip_grad: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    mixed_precision: str = "no"  # no | bf16 | fp16
    log_every: int = 10
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    ckpt_every: int = 0  # steps; 0 = at the end of every epoch
    seed: int = 0


@dataclass(frozen=True)
class BaselineConfig:
    model: str = "efficientnet_b0"
    loss: str = "weighted_ce"  # ce | weighted_ce | balanced_sampler
    augment: bool = True
    drop_rate: float = 0.1
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=2e-3))


@dataclass(frozen=True)
class VAEConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    layers_per_block: int = 1
    kl_weight: float = 1e-6
    disc_weight: float = 0.0  # must stay 0: no discriminator (see synth/vae.py)
    mid_attention: bool = True  # self-attention in the VAE mid block
    augment: bool = True  # random flips of train images (lesions have no orientation)
    scale_images: int = 2048  # train images used to estimate the latent scaling factor
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=1e-3))


@dataclass(frozen=True)
class LDMConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    conditioning: str = "diagnosis"  # diagnosis | malignant
    label_dropout: float = 0.1
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"  # v_prediction | epsilon (v: stable few-step sampling)
    beta_schedule: str = "scaled_linear"  # DDPMScheduler beta schedule
    attention: bool = True  # self-attention in every UNet level below the first
    attention_head_dim: int = 32
    cache_latents: bool = True  # encode the train split once (frozen VAE), reuse every epoch
    latent_augment: bool = True  # random flips/transposes of latents (lesions have no orientation)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=1, lr=2e-4, ema_decay=0.999)
    )


@dataclass(frozen=True)
class SampleConfig:
    balance: str = "majority"  # majority | ratio:<float> | counts:<cls>=<n>,... | none
    max_per_class: int = 0  # >0 caps each class's synthetic count (demo budget)
    steps: int = 25
    guidance: float = 3.0
    scheduler: str = "ddim"  # ddim | dpm
    batch_size: int = 64
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16: autocast while sampling
    grid_per_class: int = 8  # images per row of the per-class sample grids


@dataclass(frozen=True)
class MAEConfig:
    model: str = "vit_tiny_patch8"  # name resolved by dermae.pretrain.mae
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    synthetic_ratio: float = 1.0
    augment: bool = True  # random resized crop + flips
    min_crop_scale: float = 0.3  # smallest crop area fraction of the random resized crop
    grid_images: int = 8  # validation images in pretrain/reconstructions.png (viewing only)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1.5e-3))


@dataclass(frozen=True)
class FinetuneConfig:
    model: str = "vit_tiny_patch8"
    init: str = "mae"  # mae | scratch
    linear_probe: bool = False
    layer_decay: float = 0.75
    drop_path: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    loss: str = "weighted_ce"  # ce | weighted_ce | balanced_sampler
    synthetic_ratio: float = 1.0
    global_pool: str = "avg"  # avg (MAE recipe: new fc_norm, encoder's final norm dropped) | token
    label_smoothing: float = 0.0
    augment: bool = True
    eval_batch_size: int = 256
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-3))


@dataclass(frozen=True)
class DistillConfig:
    model: str = "efficientnet_b0"
    alpha: float = 0.7
    temperature: float = 2.0
    # Folders of the run dir holding teacher classifiers; two or more are distilled as an
    # ensemble (mean log-probabilities), saved in teacher_ensemble/model.
    teachers: tuple[str, ...] = ("teacher",)
    # False (consistent KD): the teacher sees the student's augmented view every step.
    # True: teacher run once on un-augmented train images (faster, inconsistent targets).
    cache_teacher_logits: bool = False
    loss: str = "weighted_ce"  # ce | weighted_ce | balanced_sampler (hard-label part only)
    synthetic_ratio: float = 1.0
    synthetic_hard_labels: bool = False  # False: synthetic rows learn from the teacher only
    augment: bool = True
    drop_rate: float = 0.1
    latency_runs: int = 30  # batch-1 CPU timings behind model_stats.json's median latency
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=2e-3))


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"
    bootstrap: int = 1000
    specificities: tuple[float, ...] = (0.90, 0.95)
    ece_bins: int = 15
    batch_size: int = 128


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    int8: bool = True
    calibration_images: int = 256
    calibration_split: str = "train"  # train | val (never test)
    # auto = fastest variant within max_balanced_acc_drop on val; or one of
    # dynamic | qdq | qoperator | qdq_all | qoperator_all | qdq_default
    int8_variant: str = "auto"
    int8_variants: tuple[str, ...] = ("dynamic", "qdq", "qoperator", "qdq_all", "qoperator_all")
    max_balanced_acc_drop: float = 0.005
    threshold_specificity: float = 0.9  # used only when the checkpoint holds no threshold
    timing_threads: int = 1  # 1: compare variants by CPU time, robust to a busy machine
    parity_images: int = 32


@dataclass(frozen=True)
class Config:
    run_dir: str = "runs/demo"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    ldm: LDMConfig = field(default_factory=LDMConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    pretrain: MAEConfig = field(default_factory=MAEConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


# ----------------------------------------------------------------------------- building


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check and convert one YAML value against a dataclass field type."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation)
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"config key '{key}' must be float, got {value!r}") from None
    if annotation in (int, float, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise ConfigError(
            f"config key '{key}' must be {annotation.__name__}, got {value!r} ({type(value).__name__})"
        )
    return value


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (valid keys here: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name) if dataclasses.is_dataclass(hints[name]) else None
        if default is not None and isinstance(value, dict):
            # Merge into the stage's own defaults rather than the bare dataclass defaults.
            value = {**dataclasses.asdict(default), **value}
            value = _lists_for_tuples(value)
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    return cls(**kwargs)


def _lists_for_tuples(merged: dict[str, Any]) -> dict[str, Any]:
    """Turn asdict() tuples back into lists so _coerce accepts them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-3` -> (['train', 'lr'], 0.001). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.strip().split("."), value


def _set_nested(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults < YAML file < overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        tree = loaded
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_nested(tree, keys, value)
    return from_dict(Config, tree)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
