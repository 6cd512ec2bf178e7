"""Which attention kernel a ViT runs where there is no GPU.

timm's attention calls `scaled_dot_product_attention`, whose CPU kernel is a flash-attention
variant built for long sequences. For dermae's ViTs (65 tokens at 64 px, patch 8) it is the
slow path on a CPU: its backward took 270 ms of a 780 ms bf16 ViT-Ti step, 3.8x its fp32 time,
so bf16 barely paid. timm's plain path (two matmuls and a softmax, the same math) made the
fine-tuning step 1.1x faster in fp32 and 1.85x faster in bf16 than the fused fp32 step, and the
MAE step 1.13x and 1.86x (BENCHMARKS.md section 43, `benchmarks/bench_vit_step.py`). On a GPU
the fused kernel is the right one, so the switch is made only when CUDA is absent, the same
test the training loop uses to pick its device.
"""

from __future__ import annotations

import torch
from torch import nn


def plain_attention_on_cpu(model: nn.Module) -> int:
    """Switch `model`'s timm attention modules to their unfused path when no GPU is present.

    Returns how many modules it switched (0 on a GPU machine or for a net without attention).
    Weights and outputs are unchanged up to float rounding.
    """
    if torch.cuda.is_available():
        return 0
    switched = 0
    for module in model.modules():
        if getattr(module, "fused_attn", False) is True:
            module.fused_attn = False
            switched += 1
    return switched
