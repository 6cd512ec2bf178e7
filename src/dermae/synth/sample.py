"""Balance the train split with synthetic lesions: plan, generate (DDIM/DPM + CFG), record.

Every synthetic image has its own seed, derived from (sample.seed, class, index), and its own
initial noise, so an image does not depend on which batch it was generated in. That makes
sampling resumable: ids already in the manifest are skipped, manifest rows are appended only
after their PNGs are on disk, and a rerun with the same settings generates nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from tqdm.auto import tqdm

from dermae.config import Config, ConfigError, SampleConfig
from dermae.data.prepared import MANIFEST_COLUMNS, data_dir, load_prepared
from dermae.engine.precision import autocast, resolve_precision
from dermae.synth.common import (
    MALIGNANT_NAMES,
    class_of_rows,
    default_device,
    file_digest,
    image_grid,
    save_png,
    synth_dir,
    to_uint8,
)
from dermae.synth.ldm import load_noise_scheduler, load_unet, null_class_id
from dermae.synth.vae import load_vae

SYNTH_COLUMNS = [*MANIFEST_COLUMNS, "seed", "guidance", "steps", "model_id"]
IGNORE_LABEL = -100  # cross-entropy's default ignore_index: no diagnosis for binary synthesis


class SamplingError(RuntimeError):
    """Existing synthetic data that cannot be extended with the current settings."""


# ----------------------------------------------------------------------------- planning


def plan_balance(counts: dict[str, int], spec: str, max_per_class: int = 0) -> dict[str, int]:
    """Number of synthetic images to add per class.

    spec: "majority" (every class up to the largest count), "ratio:<r>" (up to r x largest),
    "counts:<cls>=<n>,..." (explicit numbers to add; unlisted classes get 0) or "none".
    max_per_class > 0 caps every class's number.
    """
    spec = spec.strip()
    majority = max(counts.values(), default=0)
    if spec == "none":
        plan = dict.fromkeys(counts, 0)
    elif spec == "majority":
        plan = {c: max(majority - n, 0) for c, n in counts.items()}
    elif spec.startswith("ratio:"):
        try:
            ratio = float(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"sample.balance '{spec}': the ratio must be a number") from None
        if ratio < 0:
            raise ConfigError(f"sample.balance '{spec}': the ratio must be >= 0")
        target = int(round(ratio * majority))
        plan = {c: max(target - n, 0) for c, n in counts.items()}
    elif spec.startswith("counts:"):
        plan = dict.fromkeys(counts, 0)
        for item in filter(None, (p.strip() for p in spec.split(":", 1)[1].split(","))):
            name, _, number = item.partition("=")
            name = name.strip()
            if name not in counts:
                raise ConfigError(
                    f"sample.balance '{spec}': unknown class '{name}' (classes: {sorted(counts)})"
                )
            try:
                plan[name] = int(number)
            except ValueError:
                raise ConfigError(
                    f"sample.balance '{spec}': '{item}' must look like class=<integer>"
                ) from None
            if plan[name] < 0:
                raise ConfigError(f"sample.balance '{spec}': '{item}' is negative")
    else:
        raise ConfigError(
            f"sample.balance '{spec}' unknown; use majority | ratio:<r> | counts:<cls>=<n>,... | none"
        )
    if max_per_class > 0:
        plan = {c: min(n, max_per_class) for c, n in plan.items()}
    return plan


# ----------------------------------------------------------------------------- generation


def make_sampler(kind: str, noise_scheduler: SchedulerMixin) -> SchedulerMixin:
    """Deterministic few-step sampler sharing the training noise schedule."""
    # "trailing" spacing starts at the last training timestep: better with few steps.
    # No clipping of the predicted x0: latents are not bounded to [-1, 1] (diffusers' DDPM/DDIM
    # default clip_sample=True is meant for pixel-space models).
    if kind == "ddim":
        return DDIMScheduler.from_config(
            noise_scheduler.config, timestep_spacing="trailing", clip_sample=False
        )
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(
            noise_scheduler.config, timestep_spacing="trailing", thresholding=False
        )
    raise ConfigError(f"sample.scheduler '{kind}' unknown; use ddim | dpm")


def guided_prediction(
    unet: UNet2DModel,
    latents: torch.Tensor,
    t: torch.Tensor | int,
    labels: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """Classifier-free guidance: uncond + guidance * (cond - uncond), one batched UNet call.

    guidance 1 is the conditional prediction and 0 the unconditional one (one pass each).
    """
    null = torch.full_like(labels, null_class_id(unet))
    if guidance == 1.0:
        return unet(latents, t, class_labels=labels).sample.float()
    if guidance == 0.0:
        return unet(latents, t, class_labels=null).sample.float()
    both = unet(torch.cat([latents, latents]), t, class_labels=torch.cat([labels, null]))
    cond, uncond = both.sample.float().chunk(2)
    return uncond + guidance * (cond - uncond)


def initial_noise(
    shape: tuple[int, int, int], generator: torch.Generator | list[torch.Generator], n: int
) -> torch.Tensor:
    """[n, *shape] standard normal noise on the CPU (so seeds give the same images anywhere)."""
    if isinstance(generator, list):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} images")
        return torch.cat([torch.randn((1, *shape), generator=g) for g in generator])
    return torch.randn((n, *shape), generator=generator)


@torch.no_grad()
def generate(
    unet: UNet2DModel,
    vae: AutoencoderKL,
    scheduler: SchedulerMixin,
    labels: torch.Tensor,
    guidance: float,
    steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    mixed_precision: str = "no",
) -> torch.Tensor:
    """Sample images of the given class ids. Returns [N, 3, H, W] in [0, 1] (fp32, CPU).

    `generator` may be one generator or one per image (independent, resumable images).
    """
    device = next(unet.parameters()).device
    labels = labels.long().to(device)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = initial_noise(shape, generator, len(labels)).to(device)
    latents = latents * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps, device=device)
    with autocast(device, mixed_precision):
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            pred = guided_prediction(unet, model_input, t, labels, guidance)
            latents = scheduler.step(pred, t, latents).prev_sample.float()
        images = vae.decode(latents / vae.config.scaling_factor).sample.float()
    return ((images + 1) / 2).clamp(0, 1).cpu()


def image_seed(seed: int, class_name: str, index: int) -> int:
    """Stable 63-bit seed of one synthetic image."""
    digest = hashlib.sha256(f"{seed}/{class_name}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def synthetic_id(class_name: str, index: int) -> str:
    return f"syn_{class_name}_{index:06d}"


def parse_synthetic_id(image_id: str) -> tuple[str, int]:
    stem, _, number = image_id[len("syn_") :].rpartition("_")
    return stem, int(number)


# ----------------------------------------------------------------------------- manifest io


def synthetic_dir(run_dir: str | Path) -> Path:
    return data_dir(run_dir) / "synthetic"


def read_manifest(path: Path) -> pd.DataFrame:
    """Synthetic manifest; a half-written last line (killed mid-append) is dropped."""
    if path.exists():
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            path.write_bytes(raw)
        if raw.count(b"\n") >= 1:
            return pd.read_csv(path, dtype={"image_id": str, "group_id": str})
    return pd.DataFrame(columns=SYNTH_COLUMNS)


def append_rows(path: Path, rows: pd.DataFrame) -> None:
    header = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        rows[SYNTH_COLUMNS].to_csv(f, header=header, index=False, lineterminator="\n")
        f.flush()
        os.fsync(f.fileno())


def write_csv_atomic(rows: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    rows[SYNTH_COLUMNS].to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


def build_image_cache(root: Path, manifest: pd.DataFrame, image_size: int) -> None:
    """(Re)write images.npy (row i = cache_index i) from the PNGs, plus an id digest beside it."""
    digest = hashlib.sha256("\n".join(manifest["image_id"]).encode()).hexdigest()
    marker = root / "images.json"
    target = root / "images.npy"
    if target.exists() and marker.exists() and json.loads(marker.read_text()).get("ids") == digest:
        return
    array = np.zeros((len(manifest), image_size, image_size, 3), np.uint8)
    for i, rel in enumerate(manifest["path"]):
        array[i] = np.asarray(Image.open(root.parent / rel).convert("RGB"))
    tmp = root / "images.tmp.npy"
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, target)
    marker.write_text(json.dumps({"ids": digest, "count": len(manifest)}))


# ----------------------------------------------------------------------------- balancing


def _settings(cfg: SampleConfig, model_id: str, conditioning: str) -> dict:
    return {
        "model_id": model_id,
        "seed": cfg.seed,
        "guidance": cfg.guidance,
        "steps": cfg.steps,
        "scheduler": cfg.scheduler,
        # What ran: `auto` differs between machines, and so do bf16 and fp32 samples.
        "mixed_precision": resolve_precision(cfg.mixed_precision, default_device()),
        "conditioning": conditioning,
    }


def _row_labels(
    class_name: str, conditioning: str, class_names: list[str], malignant_classes: list[str]
) -> tuple[str, int, int]:
    """(diagnosis, label, malignant) columns of a synthetic row.

    label follows the prepared data's class_names: the diagnosis index, or the malignant flag
    when the data is binary; a binary-conditioned image has no diagnosis, so with 7-class
    data its label is IGNORE_LABEL.
    """
    if conditioning == "malignant":
        malignant = int(class_name == MALIGNANT_NAMES[1])
    else:
        malignant = int(class_name in malignant_classes)
    if class_name in class_names:
        label = class_names.index(class_name)
    elif list(class_names) == list(MALIGNANT_NAMES):
        label = malignant
    else:
        label = IGNORE_LABEL
    return class_name, label, malignant


def sample_balanced(
    cfg: Config, run_dir: str | Path, overwrite: bool = False, progress: bool = True
) -> dict:
    """Generate the planned synthetic images into `<run_dir>/data/synthetic/`; resumable.

    Returns (and writes to `<run_dir>/synth/sample_summary.json`) the plan and what was done.
    """
    scfg = cfg.sample
    run_dir = Path(run_dir)
    data = load_prepared(run_dir, with_synthetic=False)
    unet, meta = load_unet(run_dir)
    vae = load_vae(run_dir)
    device = default_device()
    unet.to(device)
    vae.to(device)
    classes, conditioning = list(meta["class_names"]), meta["conditioning"]
    if meta["image_size"] != data.image_size:
        raise SamplingError(
            f"generator was trained at {meta['image_size']} px but {data_dir(run_dir)} holds "
            f"{data.image_size} px images: retrain it (`dermae synth train-vae`, `synth train`)"
        )
    train = data.rows("train")
    train_class = class_of_rows(train, conditioning)
    counts = {c: int((train_class == c).sum()) for c in classes}
    plan = plan_balance(counts, scfg.balance, scfg.max_per_class)

    sd = synth_dir(run_dir)
    model_id = file_digest(
        sd / "unet" / "diffusion_pytorch_model.safetensors",
        sd / "vae" / "diffusion_pytorch_model.safetensors",
    )
    settings = _settings(scfg, model_id, conditioning)
    root = synthetic_dir(run_dir)
    images_dir = root / "images"
    settings_path = root / "settings.json"
    if overwrite and root.exists():
        shutil.rmtree(root)
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise SamplingError(
                f"{root} holds synthetic images made with other settings ({', '.join(changed)} "
                "differ): delete that folder or pass overwrite=True to start again"
            )
    images_dir.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=2))

    manifest_path = root / "manifest.csv"
    existing = read_manifest(manifest_path).drop_duplicates("image_id", keep="last")
    stale = existing["model_id"].astype(str) != model_id
    if stale.any():  # settings.json lost or edited: the rows still say which model made them
        raise SamplingError(
            f"{manifest_path} holds {int(stale.sum())} images from another generator "
            f"(model_id {existing.loc[stale, 'model_id'].iloc[0]}, now {model_id}): delete "
            f"{root} or pass overwrite=True to start again"
        )
    done = set(existing["image_id"])
    todo = [(c, i) for c in classes for i in range(plan[c]) if synthetic_id(c, i) not in done]

    sampler = make_sampler(scfg.scheduler, load_noise_scheduler(run_dir))
    class_index = {c: k for k, c in enumerate(classes)}
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="synth sample", unit="img", disable=not progress)
    for b in range(0, len(todo), scfg.batch_size):
        batch = todo[b : b + scfg.batch_size]
        seeds = [image_seed(scfg.seed, c, i) for c, i in batch]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        labels = torch.tensor([class_index[c] for c, _ in batch])
        images = to_uint8(
            generate(
                unet, vae, sampler, labels, scfg.guidance, scfg.steps, gens, scfg.mixed_precision
            )
        )
        records = []
        for (c, i), seed, pixels in zip(batch, seeds, images, strict=True):
            image_id = synthetic_id(c, i)
            save_png(pixels, images_dir / f"{image_id}.png")
            diagnosis, label, malignant = _row_labels(
                c, conditioning, data.class_names, data.malignant_classes
            )
            records.append(
                {
                    "image_id": image_id,
                    "path": f"synthetic/images/{image_id}.png",
                    "diagnosis": diagnosis,
                    "label": label,
                    "malignant": malignant,
                    "group_id": image_id,
                    "age": None,
                    "sex": None,
                    "site": None,
                    "dx_type": "synthetic",
                    "split": "train",
                    "source": "synthetic",
                    "cache_index": -1,  # assigned when images.npy is rebuilt
                    "seed": seed,
                    "guidance": scfg.guidance,
                    "steps": scfg.steps,
                    "model_id": model_id,
                }
            )
        # Rows only after their PNGs exist: a kill in between just regenerates the batch.
        append_rows(manifest_path, pd.DataFrame.from_records(records, columns=SYNTH_COLUMNS))
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start

    manifest = finalize_manifest(root, classes, plan, data.image_size)
    if todo or not all((sd / f"samples_{c}.png").exists() for c in classes):
        write_class_grids(cfg, run_dir, unet, vae, sampler, classes, manifest, train, conditioning)
    summary = {
        "counts_train": counts,
        "plan": plan,
        "generated": len(todo),
        "total_synthetic": len(manifest),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        **settings,
    }
    (sd / "sample_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def finalize_manifest(
    root: Path, classes: list[str], plan: dict[str, int], image_size: int
) -> pd.DataFrame:
    """Keep the planned rows in (class, index) order, number cache_index, rebuild images.npy."""
    manifest_path = root / "manifest.csv"
    rows = read_manifest(manifest_path).drop_duplicates("image_id", keep="last")
    parsed = [parse_synthetic_id(i) for i in rows["image_id"]]
    order = {c: k for k, c in enumerate(classes)}
    keep = [c in plan and i < plan[c] for c, i in parsed]  # a smaller plan trims the extras
    key = [(order.get(c, len(order)), i) for c, i in parsed]
    rows = rows.assign(_key=key)[keep].sort_values("_key").drop(columns="_key")
    rows = rows.reset_index(drop=True)
    rows["cache_index"] = np.arange(len(rows), dtype=np.int64)
    current = read_manifest(manifest_path)
    if len(rows) != len(current) or not (
        current["image_id"].tolist() == rows["image_id"].tolist()
        and (current["cache_index"].astype(np.int64) == rows["cache_index"]).all()
    ):
        write_csv_atomic(rows, manifest_path)
    if len(rows):
        build_image_cache(root, rows, image_size)
    return rows


def write_class_grids(
    cfg: Config,
    run_dir: Path,
    unet: UNet2DModel,
    vae: AutoencoderKL,
    sampler: SchedulerMixin,
    classes: list[str],
    manifest: pd.DataFrame,
    train: pd.DataFrame,
    conditioning: str,
) -> list[Path]:
    """Per class: a row of real train images above rows of synthetic ones.

    Classes with fewer synthetic images than the grid needs get extra preview samples (seeded
    apart from the dataset's images and not added to it).
    """
    scfg = cfg.sample
    k = scfg.grid_per_class
    data = load_prepared(run_dir, with_synthetic=False)
    real_array = data.arrays["real"]
    root = synthetic_dir(run_dir)
    train_class = class_of_rows(train, conditioning).to_numpy()
    paths = []
    for label, c in enumerate(classes):
        real_idx = train.loc[train_class == c, "cache_index"].to_numpy()[:k]
        real = np.stack([real_array[i] for i in real_idx]) if len(real_idx) else None
        synth_paths = manifest.loc[manifest["diagnosis"] == c, "path"].tolist()[: 2 * k]
        synth = [np.asarray(Image.open(root.parent / p).convert("RGB")) for p in synth_paths]
        missing = 2 * k - len(synth)
        if missing > 0:
            gens = [
                torch.Generator().manual_seed(image_seed(scfg.seed, f"preview-{c}", j))
                for j in range(missing)
            ]
            extra = generate(
                unet,
                vae,
                sampler,
                torch.full((missing,), label),
                scfg.guidance,
                scfg.steps,
                gens,
                scfg.mixed_precision,
            )
            synth.extend(to_uint8(extra))
        grid_rows = ([real] if real is not None else []) + [
            np.stack(synth[:k]),
            np.stack(synth[k : 2 * k]),
        ]
        path = synth_dir(run_dir) / f"samples_{c}.png"
        save_png(image_grid(grid_rows), path)
        paths.append(path)
    return paths
