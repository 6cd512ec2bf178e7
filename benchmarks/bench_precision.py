"""fp32 against bf16 autocast for one training step of the pipeline's CPU models, on this CPU.

    python benchmarks/bench_precision.py --out benchmarks/results/precision_<cpu>.json  # ~3 min

bf16 is fast only where the CPU multiplies in bf16 (AMX or AVX-512 BF16); elsewhere torch
emulates it. `mixed_precision: auto` (engine/precision.py) picks bf16 only where it is native;
this script measures the difference that choice makes. Models: the resnet10t classifier and
the ViT-Ti/8 classifier at 64 px, batch 64, AdamW, and the demo's latent UNet (4x8x8 latents,
batch 64). Median of `--steps` timed steps after one warm-up step, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch

from bench_inference import cpu_name  # benchmarks/ is on sys.path when run as a script
from dermae.config import LDMConfig
from dermae.engine.precision import cpu_has_native_bf16
from dermae.synth.ldm import build_unet


def classifier_step(name: str, **kwargs) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    model = timm.create_model(name, num_classes=7, **kwargs)
    x, y = torch.rand(64, 3, 64, 64), torch.randint(0, 7, (64,))
    return model, lambda: torch.nn.functional.cross_entropy(model(x), y)


def unet_step() -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    model = build_unet(LDMConfig(block_out_channels=(32, 64, 128)), 4, 8, num_classes=7)
    x, t = torch.randn(64, 4, 8, 8), torch.randint(0, 1000, (64,))
    labels = torch.randint(0, 8, (64,))
    return model, lambda: torch.nn.functional.mse_loss(model(x, t, class_labels=labels).sample, x)


MODELS: dict[str, Callable[[], tuple[torch.nn.Module, Callable[[], torch.Tensor]]]] = {
    "resnet10t": lambda: classifier_step("resnet10t"),
    "vit_tiny_patch8": lambda: classifier_step("vit_tiny_patch16_224", patch_size=8, img_size=64),
    "unet_32_64_128": unet_step,
}


def time_steps(build: Callable, bf16: bool, steps: int) -> list[float]:
    torch.manual_seed(0)
    model, loss_fn = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(1 + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record: dict = {
        "command": f"python benchmarks/bench_precision.py --steps {args.steps} --out {args.out}",
        "cpu": cpu_name(),
        "native_bf16": cpu_has_native_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": args.threads,
        "loadavg_before": os.getloadavg(),
        "models": {},
    }
    for name, build in MODELS.items():
        fp32 = statistics.median(time_steps(build, False, args.steps))
        bf16 = statistics.median(time_steps(build, True, args.steps))
        record["models"][name] = {
            "fp32_s_per_step": round(fp32, 4),
            "bf16_s_per_step": round(bf16, 4),
            "bf16_speedup": round(fp32 / bf16, 3),
        }
        print(name, record["models"][name], flush=True)
    record["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
