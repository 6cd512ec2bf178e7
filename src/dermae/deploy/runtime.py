"""onnxruntime sessions and batched inference, shared by export, quantize, predict and serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from dermae.deploy.spec import INPUT_NAME, OUTPUT_NAME


def make_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """CPU session with all graph optimisations (fuses QDQ pairs into integer kernels)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_probs(
    session: ort.InferenceSession, images: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """float32 [N, 3, S, S] in [0, 1] -> probabilities [N, C] (float32)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    out = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
