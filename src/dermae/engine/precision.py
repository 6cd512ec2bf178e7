"""Which precision a stage really runs in.

bf16 pays only where the hardware multiplies in bf16: on a CPU with AMX (or AVX-512 BF16) it
made ViT-S and resnet steps 1.3-2.2x faster, but on an AVX2-only CPU (AMD EPYC, measured) a
resnet10t step was 23x slower, because every bf16 op is emulated (BENCHMARKS.md §18).
`auto` therefore picks bf16 only where it is native.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

from dermae.config import PRECISIONS

_warned: set[str] = set()


def cpu_has_native_bf16() -> bool:
    """True where this CPU has AMX tiles or AVX-512 BF16 instructions."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively (not by emulation)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


# Share of a net's convolutions that are depthwise above which `auto` keeps it in fp32 on a CPU.
DEPTHWISE_SHARE = 0.1  # mobilenetv3_small: 11 of 53 (squeeze-excite convs count too)


def mostly_depthwise(model: torch.nn.Module) -> bool:
    """True for nets built from depthwise convolutions (MobileNets, EfficientNets).

    On an AMX CPU they trained 1.4-1.8x slower under bf16 autocast than in fp32 (BENCHMARKS.md
    sections 29 and 34): their depthwise kernels gain nothing from AMX, and the casts cost.
    """
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1 and m.groups == m.in_channels]
    return bool(convs) and len(depthwise) / len(convs) >= DEPTHWISE_SHARE


def resolve_precision(
    requested: str, device: torch.device, model: torch.nn.Module | None = None
) -> str:
    """The precision to run: `auto` becomes bf16 where it is native and `no` elsewhere; on a
    CPU also `no` for a `model` that is `mostly_depthwise`.

    An explicit `bf16` is honoured, with a warning where it is emulated, because a user may
    want bf16's numerics; `fp16` is for GPUs and passes through.
    """
    if requested not in PRECISIONS:
        raise ValueError(
            f"mixed_precision '{requested}' unknown; use one of {', '.join(PRECISIONS)}"
        )
    if requested == "auto":
        if device.type == "cpu" and model is not None and mostly_depthwise(model):
            return "no"
        return "bf16" if native_bf16(device) else "no"
    if requested == "bf16" and not native_bf16(device) and device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(
            f"mixed_precision bf16 on this {device.type} is emulated, not native (no AMX or "
            "AVX-512 BF16), and can be many times slower than fp32; set mixed_precision: auto "
            "to use bf16 only where it pays",
            stacklevel=2,
        )
    return requested


def autocast(device: torch.device, mixed_precision: str) -> AbstractContextManager:
    """bf16 autocast for inference (sampling), or a no-op where `mixed_precision` resolves to
    `no`."""
    resolved = resolve_precision(mixed_precision, device)
    if resolved == "no":
        return nullcontext()
    if resolved != "bf16":
        raise ValueError(
            f"mixed_precision '{mixed_precision}' not supported here; use auto | no | bf16"
        )
    return torch.autocast(device.type, dtype=torch.bfloat16)


def precision_scope(
    device: torch.device, mixed_precision: str, model: torch.nn.Module | None = None
) -> AbstractContextManager:
    """Exactly `mixed_precision` inside, whatever autocast is active around it: `no` switches
    an outer bf16 autocast off, `bf16` (or `auto` where bf16 is native) switches one on.

    For a frozen model that wants another precision than the model being trained (a teacher
    whose convolutions gain from AMX beside a depthwise student that does not). `auto` is
    resolved for `model` where one is given (see `resolve_precision`).
    """
    resolved = resolve_precision(mixed_precision, device, model=model)
    dtype = torch.float16 if resolved == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=resolved != "no")
