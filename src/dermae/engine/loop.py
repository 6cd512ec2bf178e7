"""The one training loop. Every stage hands it a task; it owns optimisation and bookkeeping.

A task is an `nn.Module` whose `forward(batch)` returns a dict with a scalar `loss`.
The trainable part (`model`, by default `task.model`) is what is optimised,
checkpointed and EMA-averaged; frozen parts (a teacher, a VAE) live on the task
with `requires_grad=False`.

Accelerate gives one code path for CPU, one GPU and DDP (`torchrun` / `accelerate
launch`). `TrainConfig.batch_size` is the *global* batch: each process gets its slice of
the same batches a single process would see.

Resume is exact on CPU with `num_workers=0`: the epoch order comes from a generator
seeded with (seed, epoch), batches already done are skipped without loading them, and
the python/numpy/torch RNG states are restored from the checkpoint.

Resume only happens when the checkpoint's fingerprint (settings: the train config and the
caller's `run_config`; the training data; the model's architecture; `upstream` artifacts)
matches this call's; otherwise the loop says why in one line and trains afresh. A damaged
checkpoint is a `CheckpointError` naming the file, never a torch traceback. The last
checkpoint of a finished training holds no optimizer state: it is only ever reused.

With a `select_metric`, every evaluation that beats the best score so far writes `best/`;
`TrainConfig.select` says which weights the loop hands back: `best` (those) or `last` (the
final step's). A short budget on a small validation split makes the best of a few noisy
evaluations a noisy pick (BENCHMARKS.md section 20), so the demo keeps the last.

Under DDP the epoch order is shared, but every process has its own RNG stream (seed +
process index: its own augmentations, masks, noise) and saves and restores its own state.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, send_to_device
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dermae.config import TrainConfig, to_dict
from dermae.engine.checkpoint import (
    CONFIG_FILE,
    NO_RESUME_HINT,
    STATE_DIR,
    CheckpointError,
    atomic_dir,
    load_training_state,
    load_weights,
    replace_dir,
    restore_rng,
    rng_state,
    save_training_state,
    seed_everything,
    write_model_files,
)
from dermae.engine.distributed import release_process_group_at_exit
from dermae.engine.fingerprint import (
    artifact_digest,
    dataset_fingerprint,
    digest,
    explain,
    model_signature,
)
from dermae.engine.precision import resolve_precision

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
# TrainConfig keys that change bookkeeping only, not the weights: resume across them
# (`select` too: both the best and the last weights are always kept).
BOOKKEEPING_KEYS = ("log_every", "ckpt_every", "select")


@dataclass
class FitResult:
    task: nn.Module
    model: nn.Module
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    # Training seconds summed over every call that trained this run (a resumed run adds its
    # earlier calls' time up to their last checkpoint; reloading a finished run adds ~0).
    seconds: float = 0.0
    # The weights `task` holds: {"rule": best | last, "step", "metric", "score"}; None when
    # nothing was validated on `select_metric`.
    selected: dict[str, Any] | None = None


def train_seed(cfg: TrainConfig) -> int:
    """The run's seed; `None` (a TrainConfig built outside a `Config`) means 0."""
    return 0 if cfg.seed is None else int(cfg.seed)


def steps_per_epoch(num_samples: int, cfg: TrainConfig) -> int:
    """Optimizer steps per epoch; matches the loader's drop_last batching."""
    batches = num_samples // cfg.batch_size if num_samples >= cfg.batch_size else 1
    return max(1, batches // cfg.grad_accum)


def total_steps(num_samples: int, cfg: TrainConfig) -> int:
    """Optimizer steps the run will take."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return cfg.epochs * steps_per_epoch(num_samples, cfg)


def epoch_indices(
    num_samples: int, cfg: TrainConfig, epoch: int, sampler_weights: np.ndarray | None
) -> list[int]:
    """The sample order of one epoch, a pure function of (seed, epoch).

    Materialising it lets a resumed run skip finished batches without loading them
    (loading would consume the augmentation RNG and break exact resume).
    """
    generator = torch.Generator().manual_seed(train_seed(cfg) * 100_003 + epoch)
    if sampler_weights is not None:
        weights = torch.as_tensor(sampler_weights, dtype=torch.double)
        order = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    else:
        order = torch.randperm(num_samples, generator=generator)
    return order.tolist()


def _epoch_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    epoch: int,
    skip_batches: int,
    sampler_weights: np.ndarray | None,
    collate_fn: Callable | None,
    num_workers: int,
    rank: int,
    world: int,
) -> DataLoader:
    """This process's slice of every global batch of the epoch, finished batches skipped.

    Sharding here, rather than with Accelerate's dataloader wrapper, avoids its
    one-batch lookahead, which would draw the next batch's augmentation before a
    checkpoint saves the RNG state (and so break exact resume).
    """
    order = epoch_indices(len(dataset), cfg, epoch, sampler_weights)
    batch = cfg.batch_size
    if len(order) >= batch:  # equal batches keep DDP identical to one process
        order = order[: len(order) // batch * batch]
    elif world > 1:
        raise ValueError(
            f"{len(order)} samples cannot fill one batch of {batch} on {world} processes"
        )
    else:
        batch = len(order)
    if batch % world:
        raise ValueError(f"batch_size {batch} is not divisible by the {world} processes")
    local = batch // world
    order = order[skip_batches * batch :]
    mine = [
        i
        for start in range(0, len(order), batch)
        for i in order[start + rank * local : start + (rank + 1) * local]
    ]
    return DataLoader(
        dataset,
        batch_size=local,
        sampler=mine,
        # Its own generator, so creating the iterator does not draw from the global RNG.
        generator=torch.Generator().manual_seed(train_seed(cfg) + epoch),
        collate_fn=collate_fn,
        num_workers=num_workers,
    )


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's lr: timm's scheduler sets each group to base lr x its layer-decay scale."""
    group = optimizer.param_groups[0]
    scale = group.get("lr_scale", 1.0)
    return group["lr"] / scale if scale > 0 else group["lr"]


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, after_step: int) -> None:
    """Drop log lines newer than the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if json.loads(line).get("step", 0) <= after_step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def _resolve_model(task: nn.Module, model: nn.Module | None) -> nn.Module:
    if model is not None:
        return model
    candidate = getattr(task, "model", None)
    return candidate if isinstance(candidate, nn.Module) else task


def _weights_of(module: nn.Module) -> nn.Module:
    """What a checkpoint stores: a wrapper's `checkpoint_module` (a `Classifier`'s timm net,
    so every classifier checkpoint has timm's keys), else the module itself."""
    return getattr(module, "checkpoint_module", module)


def make_fingerprint(
    cfg: TrainConfig,
    trainable: nn.Module,
    train_dataset: Dataset,
    run_config: dict[str, Any] | None,
    layer_decay: float | None,
    data_hash: str | None,
    upstream: list[str | Path] | tuple[str | Path, ...],
) -> dict[str, Any]:
    """{"digest", "parts", "settings"}: what a checkpoint of this call must have been made from."""
    train = {k: v for k, v in to_dict(cfg).items() if k not in BOOKKEEPING_KEYS}
    settings = {"train": train, "run": run_config or {}, "layer_decay": layer_decay}
    settings = json.loads(json.dumps(settings, default=str))  # as the checkpoint will hold it
    parts = {
        "settings": digest(settings),
        "data": data_hash or dataset_fingerprint(train_dataset) or "unknown",
        "model": model_signature(_weights_of(trainable)),
    }
    if upstream:
        parts["upstream"] = artifact_digest(upstream)
    return {"digest": digest(parts), "parts": parts, "settings": settings}


def _saved_fingerprint(ckpt_dir: Path) -> dict[str, Any] | None:
    path = ckpt_dir / CONFIG_FILE
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is damaged or missing ({err})") from err


def _resume(
    ckpt_dir: Path,
    trainable: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: ModelEmaV3 | None,
    rank: int,
) -> tuple[dict[str, Any], bool]:
    """Load weights, optimizer, EMA and this rank's RNG; (progress, rng restored)."""
    load_weights(ckpt_dir, _weights_of(trainable))
    extra = {"ema": _weights_of(ema.module)} if ema is not None else None
    progress = load_training_state(ckpt_dir, optimizer, extra)
    return progress, restore_rng(ckpt_dir, rank)


def fit(
    task: nn.Module,
    train_dataset: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    model: nn.Module | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    sampler_weights: np.ndarray | None = None,
    collate_fn: Callable | None = None,
    resume: bool = True,
    layer_decay: float | None = None,
    desc: str = "train",
    run_config: dict[str, Any] | None = None,
    select_metric: str | None = None,
    num_workers: int = 0,
    on_step: Callable[[int], None] | None = None,
    data_hash: str | None = None,
    upstream: list[str | Path] | tuple[str | Path, ...] = (),
) -> FitResult:
    """Train `task` on `train_dataset`; see the module docstring for the contract.

    `data_hash` names the training data for the resume check; by default the dataset's own
    `fingerprint()`. `upstream`: model folders this training builds on (an MAE encoder, a
    teacher, a VAE); a checkpoint made on other upstream weights is not resumed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = train_seed(cfg)
    # One process runs several stages (`dermae run`) with different precisions; Accelerate
    # keeps its settings in a process-wide singleton, so forget the last stage's. The
    # distributed part (PartialState) is kept.
    AcceleratorState._reset_state()
    trainable = _resolve_model(task, model)
    precision = resolve_precision(
        cfg.mixed_precision,
        torch.device("cuda" if torch.cuda.is_available() else "cpu"),
        model=trainable,
    )
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
    )
    if accelerator.num_processes > 1:
        release_process_group_at_exit()
    if cfg.mixed_precision == "auto":  # say what ran: it differs between machines
        accelerator.print(f"[{desc}] mixed precision: {precision} (auto)")
    # Own stream per process (seed + rank); the model was built (and seeded) by the caller.
    seed_everything(seed, device_specific=True)
    optimizer = create_optimizer_v2(
        trainable,
        opt=cfg.opt,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        layer_decay=layer_decay,
        betas=tuple(cfg.betas),  # dropped by timm for optimizers without betas
    )
    n_steps = total_steps(len(train_dataset), cfg)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=n_steps,
        lr_min=cfg.lr * cfg.min_lr_ratio,
        warmup_t=cfg.warmup_steps,
        warmup_lr_init=cfg.lr * 0.01,
        t_in_epochs=False,
    )
    task = task.to(accelerator.device)
    ema = ModelEmaV3(trainable, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    prepared_task, optimizer = accelerator.prepare(task, optimizer)

    metrics_path = out_dir / METRICS_FILE
    ckpt_dir = out_dir / CHECKPOINT_DIR
    step, best, last_eval = 0, None, None
    earlier_seconds = 0.0  # training time of the calls this one resumes
    fingerprint = make_fingerprint(
        cfg, trainable, train_dataset, run_config, layer_decay, data_hash, upstream
    )
    stage_config = {"train": to_dict(cfg), **(run_config or {}), "fingerprint": fingerprint}
    resumed = False
    if resume and (ckpt_dir / STATE_DIR).exists():
        try:
            why = explain(_saved_fingerprint(ckpt_dir), fingerprint)
            if why is None:
                progress, rng_restored = _resume(
                    ckpt_dir, trainable, optimizer, ema, accelerator.process_index
                )
                resumed = True
        except CheckpointError as err:
            raise CheckpointError(
                f"[{desc}] cannot resume from {ckpt_dir}: {err}; {NO_RESUME_HINT}"
            ) from err
        if resumed:
            step, best = progress["step"], progress.get("best")
            last_eval = progress.get("last_eval")
            earlier_seconds = float(progress.get("seconds", 0.0))  # absent before this key
            if not rng_restored:  # more processes than when it was saved
                seed_everything(seed + step, device_specific=True)
            _truncate_jsonl(metrics_path, step)
            accelerator.print(f"[{desc}] resumed from {ckpt_dir} at step {step}/{n_steps}")
        else:
            accelerator.print(f"[{desc}] not resuming {ckpt_dir}: {why}; training afresh")
    if not resumed and accelerator.is_main_process:
        metrics_path.write_text("")
        if (out_dir / BEST_DIR).exists():  # a stale run's best weights must not win
            shutil.rmtree(out_dir / BEST_DIR)

    per_epoch = steps_per_epoch(len(train_dataset), cfg)
    eval_every = cfg.eval_every or per_epoch
    ckpt_every = cfg.ckpt_every or per_epoch
    history: list[dict[str, Any]] = []
    started = time.time()

    def checkpoint() -> None:
        accelerator.wait_for_everyone()
        rng_states = [rng_state()]
        if accelerator.num_processes > 1:
            rng_states = gather_object(rng_states)  # every rank's own stream, in rank order
        if not accelerator.is_main_process:
            return
        tmp = atomic_dir(ckpt_dir)
        write_model_files(tmp, _weights_of(trainable), stage_config)
        extra = {"ema": _weights_of(ema.module)} if ema is not None else None
        seconds = earlier_seconds + time.time() - started
        progress = {
            "step": step,
            "best": best,
            "last_eval": last_eval,
            "seconds": seconds,
            "finished": step >= n_steps,
        }
        # A finished training is only ever reused, never continued (a longer budget changes
        # the fingerprint and trains afresh), so its optimizer state would be dead weight.
        kept_optimizer = None if progress["finished"] else optimizer
        save_training_state(tmp, kept_optimizer, progress, extra, rng_states)
        replace_dir(tmp, ckpt_dir)  # rank 0 alone: no collective here

    def run_eval() -> dict[str, float]:
        nonlocal best, last_eval
        eval_model = task
        backup = None
        if ema is not None:  # evaluate with EMA weights, then put the raw ones back
            backup = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
            trainable.load_state_dict(ema.module.state_dict())
        was_training = eval_model.training
        eval_model.eval()
        with torch.no_grad(), accelerator.autocast():
            scores = evaluate(eval_model) if evaluate else {}
        eval_model.train(was_training)
        if select_metric in scores:
            last_eval = {
                "step": step,
                "score": float(scores[select_metric]),
                "metric": select_metric,
            }
        improved = select_metric in scores and (
            best is None or scores[select_metric] > best["score"]
        )
        if select_metric and improved:
            best = {
                "step": step,
                "score": float(scores[select_metric]),
                "metric": select_metric,
            }
            if accelerator.is_main_process:
                tmp = atomic_dir(out_dir / BEST_DIR)
                write_model_files(tmp, _weights_of(trainable), {**stage_config, "best": best})
                replace_dir(tmp, out_dir / BEST_DIR)
        if backup is not None:
            trainable.load_state_dict(backup)
        return scores

    progress_bar = tqdm(
        total=n_steps,
        initial=step,
        desc=desc,
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    prepared_task.train()
    running_loss, running_count = 0.0, 0
    # A task's other scalars (a KD task's ce, kd, ...), summed on their device: read at log time.
    running_terms: dict[str, torch.Tensor] = {}
    while step < n_steps:
        epoch, done_in_epoch = divmod(step, per_epoch)
        loader = _epoch_loader(
            train_dataset,
            cfg,
            epoch,
            done_in_epoch * cfg.grad_accum,
            sampler_weights,
            collate_fn,
            num_workers,
            accelerator.process_index,
            accelerator.num_processes,
        )
        for batch in loader:
            if step >= (epoch + 1) * per_epoch:
                break  # leftover micro-batches that cannot fill an accumulation group
            batch = send_to_device(batch, accelerator.device)
            with accelerator.accumulate(prepared_task):
                with accelerator.autocast():
                    out = prepared_task(batch)
                loss = out["loss"]
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.clip_grad > 0:
                    accelerator.clip_grad_norm_(trainable.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += float(loss.detach())
            running_count += 1
            for key, value in out.items():
                if key != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0:
                    running_terms[key] = running_terms.get(key, 0.0) + value.detach()
            if not accelerator.sync_gradients:
                continue
            step += 1
            scheduler.step_update(num_updates=step)
            if ema is not None:
                ema.update(trainable, step=step)
            progress_bar.update(1)
            record: dict[str, Any] = {}
            if step % cfg.log_every == 0 or step == n_steps:
                record = {
                    "step": step,
                    "epoch": step / per_epoch,
                    "loss": running_loss / max(running_count, 1),
                    "lr": _base_lr(optimizer),
                    **{k: float(v) / max(running_count, 1) for k, v in running_terms.items()},
                }
                running_loss, running_count = 0.0, 0
                running_terms = {}
                progress_bar.set_postfix(loss=f"{record['loss']:.4f}")
            if evaluate is not None and (step % eval_every == 0 or step == n_steps):
                scores = run_eval()
                record = {**record, "step": step, **{f"val_{k}": v for k, v in scores.items()}}
            if record and accelerator.is_main_process:
                history.append(record)
                _append_jsonl(metrics_path, record)
            if step % ckpt_every == 0 or step == n_steps:
                checkpoint()
            if on_step is not None:
                on_step(step)
            if step >= n_steps:
                break
    progress_bar.close()
    accelerator.wait_for_everyone()
    if ema is not None:
        trainable.load_state_dict(ema.module.state_dict())
    selected = None
    if cfg.select == "best" and select_metric and best is not None:
        if (out_dir / BEST_DIR).exists():
            load_weights(out_dir / BEST_DIR, _weights_of(trainable))
            selected = {"rule": "best", **best}
    elif cfg.select == "last" and last_eval is not None and last_eval["step"] == step:
        selected = {"rule": "last", **last_eval}
    task = accelerator.unwrap_model(prepared_task)
    task.eval()
    return FitResult(
        task=task,
        model=trainable,
        step=step,
        history=history,
        best=best,
        seconds=earlier_seconds + time.time() - started,
        selected=selected,
    )
