"""Typed configuration: one frozen dataclass per stage, YAML files, `--set` overrides.

Precedence: dataclass defaults < YAML file < command-line `--set key=value`.
Unknown or mistyped keys raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterator
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
    num_workers: int = 0
    # Classifier training: draw flips, rotation and colour jitter per image as before, but run
    # each operation once per batch (`dermae.data.batch_augment`), which takes most of the
    # ~50 ms a 64-image step spends augmenting (19 against 53 ms, BENCHMARKS.md section 34).
    # Colour ops run in one fixed order, in float.
    batch_augment: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Options of the one training loop, shared by every stage."""

    epochs: int = 1
    max_steps: int = 0  # >0 overrides epochs
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    opt: str = "adamw"  # any timm optimizer name (create_optimizer_v2)
    betas: tuple[float, ...] = (0.9, 0.999)  # for optimizers that take betas
    weight_decay: float = 0.05  # not on biases, norms, pos_embed/cls_token (timm's no_weight_decay)
    warmup_steps: int = 0
    grad_accum: int = 1
    clip_grad: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    # auto: bf16 where native, but fp32 for depthwise nets on a CPU | no | bf16 | fp16
    mixed_precision: str = "no"
    log_every: int = 10
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    ckpt_every: int = 0  # steps; 0 = at the end of every epoch
    # Which weights a validated stage keeps: best = the best validation score among the
    # evaluations, last = the final step's (validation is still logged; see engine/loop.py).
    select: str = "best"
    seed: int | None = None  # None: the top-level `seed` (set it here to override one stage)


@dataclass(frozen=True)
class BaselineConfig:
    model: str = "efficientnet_b0"
    loss: str = "weighted_ce"  # ce | weighted_ce | balanced_sampler | auto (better on val)
    augment: bool = True
    drop_rate: float = 0.1
    # > 0: each batch is blended with itself reversed, lam ~ Beta(mixup, mixup), and the loss
    # is the lam-weighted pair of both rows' labels (as distill.mixup, without a teacher). 0: off.
    mixup: float = 0.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=2e-3))


@dataclass(frozen=True)
class CnnTeacherConfig:
    """CNN members of the teacher ensemble with their own model, budget and resolution, trained
    by the `cnn_teacher` stage; the entry `cnn_teacher` in `distill.teachers` adds them.

    A member at a higher `image_size` than the data's sees the student's augmented view with
    more pixels (`images_<S>px.npy`, cached from the source files): detail the student at
    deployment size cannot see, distilled into it. Like the baseline, members train on real
    images only and keep a checkpoint by `train.select`.
    """

    members: int = 0  # 0: none; member k trains at seed + k
    model: str = "resnet10t"
    loss: str = "baseline"  # ce | weighted_ce | balanced_sampler | baseline (what (b) used)
    image_size: int | None = None  # None: data.image_size
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
    # Weight of a perceptual term: the distance between an image and its reconstruction in the
    # features of the real-trained baseline (<run_dir>/baseline/model), since no pretrained
    # LPIPS network can be downloaded here. 0: L1 + KL only, whose blur loses lesion classes.
    perceptual_weight: float = 0.0
    # Draw train rows with probability ~ count(class)^-power (as ldm.class_sampling_power):
    # rare classes (vasc, df: ~1 % of images) otherwise barely shape the decoder.
    class_sampling_power: float = 0.0
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
    # Draw train rows with probability ~ count(class)^-power: 0 natural frequencies, 0.5
    # square-root balancing, 1 every class equally often. Rare classes (vasc: ~100 images)
    # otherwise get too few UNet updates to learn their look.
    class_sampling_power: float = 0.0
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
    seed: int | None = None  # None: the top-level `seed`
    mixed_precision: str = "no"  # auto | no | bf16: autocast while sampling
    grid_per_class: int = 8  # images per row of the per-class sample grids
    # classifier: keep only synthetic images that the real-trained baseline classifies as
    # their class and that are no near-copy of a train image (`dermae synth evaluate`
    # decides; later stages read only accepted rows). none: keep every image.
    filter: str = "none"


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
    # betas (0.9, 0.95): the MAE recipe's (He et al. 2022), steadier with heavy masking.
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=2, lr=1.5e-3, betas=(0.9, 0.95))
    )


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
    # Extra seeds of the baseline (b) recipe, trained by the `baseline_seeds` stage; where
    # `baseline` is a teacher, they join the ensemble beside it (BENCHMARKS section 21: a second
    # CNN raised the demo teacher from 0.496 to 0.513 on validation). (b) itself stays one model.
    baseline_seeds: int = 0
    # False: the extra seeds stay (b)'s seeds for the ablation and judges of the synthetic
    # images, but do not join the teacher. Each member costs a forward pass per KD step (a
    # resnet10t about 0.03 s of the 0.35 s teacher forward at batch 64 on Zen 4, BENCHMARKS
    # section 44); §22 measured the student no better with them (-0.002, one seed).
    seeds_in_teacher: bool = True
    # False (consistent KD): the teacher sees the student's augmented view every step.
    # True: teacher run once on un-augmented train images (faster, inconsistent targets).
    cache_teacher_logits: bool = False
    # K > 0: each train row is augmented K times once and the teacher labels those views; every
    # step serves one of them with its teacher logits (consistent, and the teacher costs K
    # passes instead of one per epoch; `dermae.distill.views`). 0: live or clean cache, above.
    # Measured (BENCHMARKS section 33): K=8 on the patient phone student cost ~40 % less and
    # lost the whole KD gain (+0.039 live, -0.000 cached): the views are too few.
    teacher_views: int = 0
    # The frozen teacher's precision: `same` runs it inside the student's autocast (a cache is
    # made in fp32); auto (resolved for the teacher's own model) | no | bf16 | fp16 force one. Measured (BENCHMARKS section 29): a
    # mobilenetv3_small student trains faster in fp32 (`train.mixed_precision: no`) and a
    # resnet10t teacher runs faster in bf16 (`auto` on an AMX CPU).
    teacher_precision: str = "same"
    # ce | weighted_ce | balanced_sampler | baseline (whatever the baseline used); hard labels only
    loss: str = "weighted_ce"
    synthetic_ratio: float = 1.0
    synthetic_hard_labels: bool = False  # False: synthetic rows learn from the teacher only
    # > 0: student and teacher see the same mixup of each batch, lam ~ Beta(mixup, mixup)
    # (function matching, Beyer et al. 2022); needs the live teacher. 0: off.
    mixup: float = 0.0
    # > 0: adds relation_weight x the mean squared difference between the student's and the
    # teacher's cosine similarities of each batch's pooled features (similarity-preserving
    # KD; `dermae.distill.losses.relation_loss`); needs the live teacher. 0: off. Measured on
    # cpu-full-phone (BENCHMARKS section 38): 30, chosen on validation, -0.002 against plain KD
    # over five seeds.
    relation_weight: float = 0.0
    # The student's input resolution; None: data.image_size. Another size trains on real
    # images only (synthetic ones exist at data.image_size: set synthetic_ratio 0), and the
    # ablation trains (a), (b) and (g) at it too, so the variants stay like for like. A
    # teacher at a lower resolution sees the student's augmented view resized down.
    image_size: int | None = None
    augment: bool = True
    drop_rate: float = 0.1
    latency_runs: int = 30  # batch-1 CPU timings behind model_stats.json's median latency
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=2e-3))


@dataclass(frozen=True)
class AblateConfig:
    """Which like-for-like variants `dermae ablate` trains (see dermae.evaluate.ablation)."""

    # Any of a b c d e f. (b) is the student trained with the baseline's loss (`baseline.loss:
    # auto` picks weighted CE or a balanced sampler on validation); set `distill.loss:
    # baseline` so that (d) shares it.
    variants: tuple[str, ...] = ("a", "b", "c", "d")
    # Seeds of (b) and (d) for the headline verdict: 1 = one model each. N > 1 also trains
    # them at seeds seed + 1 ... seed + N - 1 (same teacher; (b)'s come from the
    # baseline_seeds stage where it has them) and pairs the means over seeds with intervals
    # that hold the seed spread (dermae.evaluate.seeds).
    seeds: int = 1
    # Which variants besides (b) get those seeds, where they trained: (d) and (g) by default;
    # add c for (c) over seeds too (one more student per extra seed).
    seed_variants: tuple[str, ...] = ("d", "g")


@dataclass(frozen=True)
class ExternalSetConfig:
    """An external labelled set scored by the evaluate stage (never trained or tuned on)."""

    name: str = ""  # folder name of its results, and its label in the report
    path: str = ""  # a dataset folder or labels CSV
    layout: str = "auto"  # auto | ham10000 | isic | folders


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"
    bootstrap: int = 1000
    specificities: tuple[float, ...] = (0.90, 0.95)
    ece_bins: int = 15
    batch_size: int = 128
    external: tuple[ExternalSetConfig, ...] = ()  # [{name, path, layout?}, ...]


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    int8: bool = True
    calibration_images: int = 256
    calibration_split: str = "train"  # train | val (never test)
    # auto = fastest variant within max_balanced_acc_drop on val; or one of
    # dynamic | qdq | qoperator | qdq_all | qoperator_all | qdq_default
    int8_variant: str = "auto"
    int8_variants: tuple[str, ...] = ()  # () = dermae.deploy.quantize.DEFAULT_VARIANTS
    max_balanced_acc_drop: float = 0.005
    # ...and gives fp32's top class on at least this share of validation images
    min_top1_agreement: float = 0.95
    threshold_specificity: float = 0.9  # used only when the checkpoint holds no threshold
    timing_threads: int = 1  # 1: compare variants by CPU time, robust to a busy machine
    parity_images: int = 32


@dataclass(frozen=True)
class Config:
    run_dir: str = "runs/demo"
    seed: int = 0  # every stage's seed unless the stage sets its own (data.split_seed excepted)
    threads: int = 0  # torch CPU threads; 0 = DERMAE_THREADS, else what the process may use
    data: DataConfig = field(default_factory=DataConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    cnn_teacher: CnnTeacherConfig = field(default_factory=CnnTeacherConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    ldm: LDMConfig = field(default_factory=LDMConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    pretrain: MAEConfig = field(default_factory=MAEConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        # Stage seeds left at None follow the top-level seed, so `--set seed=1` reseeds all.
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            changes: dict[str, Any] = {}
            train = getattr(section, "train", None)
            if isinstance(train, TrainConfig) and train.seed is None:
                changes["train"] = dataclasses.replace(train, seed=self.seed)
            if isinstance(section, SampleConfig) and section.seed is None:
                changes["seed"] = self.seed
            if changes:
                object.__setattr__(self, f.name, dataclasses.replace(section, **changes))


def _field_default(cls: type, name: str) -> Any:
    """A field's own default, without building (and post-processing) the whole `cls`."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


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
    if annotation is str and value is False and key.endswith("precision"):
        return "no"  # YAML 1.1 reads a bare `mixed_precision: no` as False
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
        default = _field_default(cls, name) if dataclasses.is_dataclass(hints[name]) else None
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


# Keys added after runs were made, with their off value. Fingerprints (a stage's done mark, a
# training checkpoint) leave them out while off, so that what was made before they existed
# still counts as done and still resumes.
LATER_KEYS: dict[str, dict[str, Any]] = {
    "data": {"batch_augment": False},
    "baseline": {"mixup": 0.0},
    "vae": {"perceptual_weight": 0.0, "class_sampling_power": 0.0},
    "distill": {"teacher_views": 0, "image_size": None, "seeds_in_teacher": True},
    "ablate": {"seed_variants": ["d", "g"]},
}


def without_later_keys(section: str, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` (a section as a dict) without the LATER_KEYS of `section` at their off value."""
    later = LATER_KEYS.get(section, {})
    return {k: v for k, v in settings.items() if not (k in later and v == later[k])}


def fingerprint_tree(cfg: Config) -> dict[str, Any]:
    """`to_dict(cfg)` as fingerprints see it (see LATER_KEYS)."""
    tree = to_dict(cfg)
    return {k: without_later_keys(k, v) if isinstance(v, dict) else v for k, v in tree.items()}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-3` -> (['train', 'lr'], 0.001). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override '{text}': the value is not valid YAML ({_yaml_problem(err)}); "
            f"quote it to pass text, e.g. --set '{key}=\"{raw}\"'"
        ) from None
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
        if path.is_dir():
            raise ConfigError(f"config path {path} is a folder; pass a YAML file (-c FILE.yaml)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(
                f"config file {path} is not valid YAML: {_yaml_problem(err)}"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        tree = loaded
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_nested(tree, keys, value)
    cfg = from_dict(Config, tree)
    validate_config(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------- validation


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line: what the YAML parser objects to, and where."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{where}{problem}"


# Integer keys that must be >= 1 (every other integer key must be >= 0).
POSITIVE_INT_KEYS = frozenset(
    {
        "image_size",
        "batch_size",
        "eval_batch_size",
        "grad_accum",
        "log_every",
        "latent_channels",
        "layers_per_block",
        "num_train_timesteps",
        "attention_head_dim",
        "block_out_channels",
        "scale_images",
        "steps",
        "decoder_dim",
        "decoder_heads",
        "latency_runs",
        "ece_bins",
        "opset",
        "timing_threads",
        "seeds",
    }
)
# Float keys that are fractions or probabilities, in [0, 1] (every other float must be >= 0).
UNIT_FLOAT_KEYS = frozenset(
    {
        "val_frac",
        "test_frac",
        "min_top1_agreement",
        "synthetic_ratio",
        "min_lr_ratio",
        "ema_decay",
        "label_dropout",
        "class_sampling_power",
        "mask_ratio",
        "min_crop_scale",
        "layer_decay",
        "drop_path",
        "drop_rate",
        "label_smoothing",
        "alpha",
        "threshold_specificity",
        "specificities",
        "max_balanced_acc_drop",
    }
)
TIMM_MODEL_KEYS = ("baseline.model", "cnn_teacher.model", "distill.model")
VIT_MODEL_KEYS = ("pretrain.model", "finetune.model")
MAX_NAME_LENGTH = 255  # bytes per file or folder name on common file systems


def _check_number(key: str, value: Any) -> None:
    name = key.rsplit(".", 1)[-1].split("[", 1)[0]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    if isinstance(value, int) and name in POSITIVE_INT_KEYS and value < 1:
        raise ConfigError(f"config key '{key}' must be 1 or more, got {value}")
    if value < 0:
        raise ConfigError(f"config key '{key}' must not be negative, got {value}")
    if isinstance(value, float) and name in UNIT_FLOAT_KEYS and value > 1:
        raise ConfigError(f"config key '{key}' must be between 0 and 1, got {value}")


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf, tuples item by item as key[i]."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{key}.")
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from _walk(item, f"{key}[{i}].")
                else:
                    yield f"{key}[{i}]", item
        else:
            yield key, value


def _check_model_names(cfg: Config) -> None:
    # Imported here: timm is slow to import and dermae.pretrain imports this module.
    import difflib

    import timm

    from dermae.pretrain.mae import resolve_vit

    for key in TIMM_MODEL_KEYS:
        name = _get(cfg, key)
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"config key '{key}': '{name}' is not a timm model{hint}; "
                "see timm.list_models() for the names"
            )
    for key in VIT_MODEL_KEYS:
        try:
            resolve_vit(_get(cfg, key))
        except ValueError as err:
            raise ConfigError(f"config key '{key}': {err}") from None


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate_config(cfg: Config) -> None:
    """Raise `ConfigError` naming the first key whose value cannot work: negative or zero sizes
    and steps, a training stage with no steps, fractions above 1, unknown model names, a
    run_dir that is a file or has an over-long name. Types were checked while building."""
    for key, value in _walk(cfg, ""):
        _check_number(key, value)
    _check_choice("distill.teacher_precision", cfg.distill.teacher_precision, TEACHER_PRECISIONS)
    for f in dataclasses.fields(cfg):
        stage = getattr(cfg, f.name)
        train = getattr(stage, "train", None)
        if isinstance(train, TrainConfig):
            _check_choice(f"{f.name}.train.mixed_precision", train.mixed_precision, PRECISIONS)
            _check_choice(f"{f.name}.train.select", train.select, SELECT_RULES)
        if isinstance(train, TrainConfig) and train.epochs == 0 and train.max_steps == 0:
            raise ConfigError(
                f"config keys '{f.name}.train.epochs' and '{f.name}.train.max_steps' are both 0, "
                "so the stage would not train: set one of them to a positive number"
            )
        if getattr(stage, "block_out_channels", None) == ():
            raise ConfigError(
                f"config key '{f.name}.block_out_channels' must list at least one width"
            )
    if cfg.data.group_missing_lesions not in ("error", "image"):
        raise ConfigError(
            f"config key 'data.group_missing_lesions' must be error or image, "
            f"got '{cfg.data.group_missing_lesions}'"
        )
    long = [part for part in Path(cfg.run_dir).parts if len(part.encode()) > MAX_NAME_LENGTH]
    if long:
        raise ConfigError(
            f"config key 'run_dir': the name '{long[0][:40]}...' is {len(long[0].encode())} "
            f"bytes long, more than the {MAX_NAME_LENGTH} a file system allows; use a shorter one"
        )
    run_dir = Path(cfg.run_dir)
    blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(
            f"config key 'run_dir': {blocker} is a file, not a folder, so {run_dir} cannot be "
            "a run folder; remove the file or set run_dir (--run-dir) to another folder"
        )
    _check_choice("baseline.loss", cfg.baseline.loss, (*CLASS_LOSSES, "auto"))
    _check_choice("finetune.loss", cfg.finetune.loss, CLASS_LOSSES)
    _check_choice("distill.loss", cfg.distill.loss, (*CLASS_LOSSES, "baseline"))
    _check_choice("cnn_teacher.loss", cfg.cnn_teacher.loss, (*CLASS_LOSSES, "baseline"))
    for i, variant in enumerate(cfg.ablate.variants):
        _check_choice(f"ablate.variants[{i}]", variant, ("a", "b", "c", "d", "e", "f", "g"))
    for i, variant in enumerate(cfg.ablate.seed_variants):
        _check_choice(f"ablate.seed_variants[{i}]", variant, ("c", "d", "g"))
    if (
        cfg.distill.baseline_seeds > 0
        and cfg.distill.seeds_in_teacher
        and "baseline" not in cfg.distill.teachers
    ):
        raise ConfigError(
            f"config key 'distill.baseline_seeds' is {cfg.distill.baseline_seeds}, but "
            f"distill.teachers {list(cfg.distill.teachers)} has no 'baseline' for the extra "
            "seeds to join: add 'baseline' to distill.teachers, set distill.seeds_in_teacher to "
            "false, or set baseline_seeds to 0"
        )
    swapped = sorted({"e", "f"} & set(cfg.ablate.variants))
    if swapped and "teacher" not in cfg.distill.teachers:
        raise ConfigError(
            f"config key 'ablate.variants' has {swapped}, which replace the MAE teacher, but "
            f"distill.teachers {list(cfg.distill.teachers)} has no 'teacher': drop them from "
            "ablate.variants or add 'teacher' to distill.teachers"
        )
    if cfg.distill.mixup > 0 and cfg.distill.cache_teacher_logits:
        raise ConfigError(
            "config key 'distill.mixup' needs the live teacher, but "
            "distill.cache_teacher_logits is true (the cache holds logits of unmixed images): "
            "set one of them off"
        )
    if cfg.distill.teacher_views > 0 and (cfg.distill.cache_teacher_logits or cfg.distill.mixup):
        other = "cache_teacher_logits" if cfg.distill.cache_teacher_logits else "mixup"
        raise ConfigError(
            f"config key 'distill.teacher_views' is {cfg.distill.teacher_views}, but "
            f"distill.{other} is on too: views cache the teacher's logits of unmixed augmented "
            "images, the clean cache does without views; set one of them off"
        )
    if cfg.distill.teacher_views > 0 and cfg.data.batch_augment:
        raise ConfigError(
            "config key 'distill.teacher_views' draws its views per image, once; "
            "data.batch_augment augments each batch afresh: set one of them off"
        )
    if cfg.distill.teacher_views > 0 and not cfg.distill.augment:
        raise ConfigError(
            "config key 'distill.teacher_views' needs distill.augment=true: un-augmented views "
            "are all one image; set teacher_views to 0 or turn augmentation on"
        )
    student_size = cfg.distill.image_size
    if (
        student_size not in (None, cfg.data.image_size)
        and cfg.data.include_synthetic
        and cfg.distill.synthetic_ratio > 0
    ):
        raise ConfigError(
            f"config key 'distill.image_size' is {student_size}, but the synthetic images exist "
            f"only at data.image_size {cfg.data.image_size} and distill.synthetic_ratio is "
            f"{cfg.distill.synthetic_ratio}: set distill.synthetic_ratio=0 (the student trains "
            "on real images only) or leave distill.image_size unset"
        )
    _check_choice("sample.filter", cfg.sample.filter, ("none", "classifier"))
    _check_choice("sample.mixed_precision", cfg.sample.mixed_precision, ("auto", "no", "bf16"))
    _check_model_names(cfg)


CLASS_LOSSES = ("ce", "weighted_ce", "balanced_sampler")
PRECISIONS = ("auto", "no", "bf16", "fp16")  # engine/precision.py resolves auto
TEACHER_PRECISIONS = ("same", *PRECISIONS)  # same: the student's distill.train.mixed_precision
SELECT_RULES = ("best", "last")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got '{value}'")
