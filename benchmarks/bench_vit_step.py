"""Why the ViT's bf16 gain shrinks inside the fine-tuning stage: one change at a time.

    python benchmarks/bench_vit_step.py --out benchmarks/results/vit_step_<cpu>.json  # ~4 min

`bench_precision.py`'s bare ViT-Ti/8 step (timm model, AdamW, cross-entropy) ran 1.40x faster
in bf16 on an AVX-512 BF16 CPU, but the demo's fine-tuning stage only 1.18x (BENCHMARKS.md
section 42). This script starts from that bare step and adds, one at a time and then all
together, what the stage's step has besides: the pipeline's `Classifier` wrapper (normalising,
channels_last weights), the teacher's timm options (avg pooling with fc_norm, drop path 0.1),
timm's layer-decay AdamW, gradient clipping and Accelerate's autocast. Each variant is timed
in fp32 and in bf16 (median of `--steps` steps after one warm-up, batch 64 at 64 px, 2
threads); `--profile` adds torch.profiler's top operators of the full step in both precisions.
Every variant sets timm's `fused_attn` explicitly (the pipeline turns it off on a CPU,
`dermae.engine.attention`); the last ones compare the plain path, also for the MAE step.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from timm.optim import create_optimizer_v2

from bench_step_breakdown import median_seconds  # benchmarks/ is on sys.path as a script
from dermae.classify.model import Classifier, classifier_config
from dermae.config import MAEConfig
from dermae.pretrain.mae import build_mae
from run_record import this_machine

BATCH, SIZE, CLASSES = 64, 64, 7
VIT = ("vit_tiny_patch16_224", {"patch_size": 8, "img_size": SIZE})
STAGE_KWARGS = {"global_pool": "avg", "drop_path_rate": 0.1}


def _set_fused(model: torch.nn.Module, fused: bool) -> None:
    """timm's fused kernel or its plain path, whatever the pipeline would pick here."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused


def build(wrapper: bool, stage_kwargs: bool) -> torch.nn.Module:
    arch, kwargs = VIT
    kwargs = {**kwargs, **(STAGE_KWARGS if stage_kwargs else {})}
    if wrapper:
        names = [f"c{i}" for i in range(CLASSES)]
        config = classifier_config(arch, names, names[:1], SIZE, kwargs)
        return Classifier(config)
    return timm.create_model(arch, pretrained=False, num_classes=CLASSES, **kwargs)


def make_step(
    bf16: bool,
    wrapper: bool = False,
    stage_kwargs: bool = False,
    layer_decay: bool = False,
    clip: bool = False,
    accelerate: bool = False,
    unfused_attention: bool = False,
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build(wrapper, stage_kwargs).train()
    _set_fused(model, not unfused_attention)
    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75 if layer_decay else None
    )
    images, labels = torch.rand(BATCH, 3, SIZE, SIZE), torch.randint(0, CLASSES, (BATCH,))
    if accelerate:
        AcceleratorState._reset_state()  # as the training loop does: each stage its precision
        accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=True)
        model, optimizer = accelerator.prepare(model, optimizer)

        def step() -> None:
            with accelerator.autocast():
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            accelerator.backward(loss)
            if clip:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


VARIANTS: dict[str, dict[str, bool]] = {
    "bare (bench_precision)": {},
    "+ Classifier wrapper (channels_last)": {"wrapper": True},
    "+ avg pool, fc_norm, drop path 0.1": {"stage_kwargs": True},
    "+ layer-decay AdamW": {"layer_decay": True},
    "+ clip_grad_norm 1.0": {"clip": True},
    "+ Accelerate autocast": {"accelerate": True},
    "all (the stage's step)": {
        "wrapper": True,
        "stage_kwargs": True,
        "layer_decay": True,
        "clip": True,
        "accelerate": True,
    },
    "all, attention unfused": {
        "wrapper": True,
        "stage_kwargs": True,
        "layer_decay": True,
        "clip": True,
        "accelerate": True,
        "unfused_attention": True,
    },
}


def make_mae_step(bf16: bool, unfused_attention: bool = False) -> Callable[[], None]:
    """The MAE pre-training step: 75 % of the patches hidden, the pipeline's default decoder."""
    torch.manual_seed(0)
    mae = build_mae(MAEConfig(model="vit_tiny_patch8"), SIZE).train()
    _set_fused(mae, not unfused_attention)
    optimizer = create_optimizer_v2(mae, opt="adamw", lr=1.5e-3, weight_decay=0.05)
    images = torch.rand(BATCH, 3, SIZE, SIZE)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = mae(images, 0.75)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def top_ops(step: Callable[[], None], rows: int) -> list[dict[str, float | str]]:
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 3 / 1000, 1)}
        for e in averages[:rows]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record: dict = {
        "command": f"python benchmarks/bench_vit_step.py --steps {args.steps}"
        + (" --profile" if args.profile else "")
        + f" --out {args.out}",
        "machine": this_machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "loadavg_before": os.getloadavg(),
        "variants": {},
    }

    def both_precisions(make: Callable[[bool], Callable[[], None]]) -> dict[str, float]:
        fp32 = median_seconds(make(False), args.steps)["median_s"]
        bf16 = median_seconds(make(True), args.steps)["median_s"]
        return {
            "fp32_s_per_step": round(fp32, 4),
            "bf16_s_per_step": round(bf16, 4),
            "bf16_speedup": round(fp32 / bf16, 3),
        }

    makers = {
        name: (lambda bf16, options=options: make_step(bf16, **options))
        for name, options in VARIANTS.items()
    }
    makers["MAE step"] = lambda bf16: make_mae_step(bf16, False)
    makers["MAE step, attention unfused"] = lambda bf16: make_mae_step(bf16, True)
    for name, make in makers.items():
        record["variants"][name] = both_precisions(make)
        print(f"{name:40s} {record['variants'][name]}", flush=True)
    if args.profile:
        full = VARIANTS["all (the stage's step)"]
        unfused = VARIANTS["all, attention unfused"]
        record["top_ops"] = {
            label: top_ops(make_step(bf16, **options), rows=15)
            for label, bf16, options in (
                ("fp32", False, full),
                ("bf16", True, full),
                ("bf16, attention unfused", True, unfused),
            )
        }
    record["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
