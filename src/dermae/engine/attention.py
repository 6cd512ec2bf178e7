"""Which attention kernel a ViT runs where there is no GPU.

timm's attention calls `scaled_dot_product_attention`, whose CPU kernel is a flash-attention
variant built for long sequences. For dermae's ViTs (65 tokens at 64 px, patch 8) it is the
slow path on a CPU: in bf16 its backward took 303 ms of a ViT-Ti step, 3.5x its fp32 time, so
bf16 barely paid. timm's plain path (two matmuls and a softmax, the same math) made the bf16
fine-tuning step 2.1x and the MAE step 1.7x faster than the fused fp32 ones, and the demo's
fine-tuning and MAE stages 1.78x and 1.72x (BENCHMARKS.md section 43,
`benchmarks/bench_vit_step.py`). On a GPU the fused kernel is the right one, so the switch is
made only when CUDA is absent, the test the training loop uses to pick its device.
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
