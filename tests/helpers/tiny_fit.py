"""A tiny regression task trained by `dermae.engine.loop.fit`, runnable as a script.

Used by the engine tests in subprocesses (SIGKILL + resume, torchrun with 2 processes).
Usage: python -m tests.helpers.tiny_fit OUT_DIR [--kill-at STEP] [--steps N] [--ema D] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from dermae.config import TrainConfig
from dermae.engine.checkpoint import save_model, seed_everything
from dermae.engine.loop import fit


class PointsDataset(Dataset):
    """y = x @ w_true + noise, with a random augmentation that consumes the torch RNG."""

    def __init__(self, n: int = 64, dim: int = 8, seed: int = 0, jitter: bool = True):
        self.jitter = jitter
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, 1, generator=g) + 0.01 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = torch.tensor(i)
        if not self.jitter:
            return {"x": self.x[i], "y": self.y[i], "index": index}
        noise = 0.01 * torch.randn_like(self.x[i])  # exercises RNG restore on resume
        return {"x": self.x[i] + noise, "y": self.y[i], "index": index}


class RegressionTask(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = self.model(batch["x"])
        error = (pred - batch["y"]).detach().abs().mean()  # a logged term beside the loss
        return {"loss": nn.functional.mse_loss(pred, batch["y"]), "pred": pred, "mae": error}


class RecordingTask(RegressionTask):
    """Records, per step, a draw from the global torch RNG (as an MAE mask or a diffusion
    timestep would make) and the sample indices this process trained on."""

    def __init__(self, dim: int = 8):
        super().__init__(dim)
        self.draws: list[float] = []
        self.indices: list[list[int]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.draws.append(float(torch.rand(())))
        self.indices.append(batch["index"].tolist())
        return super().forward(batch)


def run(
    out_dir: Path,
    steps: int,
    kill_at: int = 0,
    ema: float = 0.0,
    batch: int = 8,
    jitter: bool = True,
    record: bool = False,
):
    seed_everything(0)
    task = RecordingTask() if record else RegressionTask()
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=batch,
        lr=5e-2,
        warmup_steps=2,
        ckpt_every=3,
        log_every=1,
        ema_decay=ema,
        seed=0,
        clip_grad=1.0,
    )

    def maybe_die(step: int) -> None:
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = fit(task, PointsDataset(jitter=jitter), cfg, out_dir, on_step=maybe_die, desc="tiny")
    rank = int(os.environ.get("RANK", "0"))
    if record:
        draws = {"draws": task.draws, "indices": task.indices}
        (out_dir / f"draws_{rank}.json").write_text(json.dumps(draws))
    if rank == 0:
        save_model(out_dir / "final", result.model, {"steps": result.step})
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--ema", type=float, default=0.0)
    # Per-process augmentation streams differ under DDP, so the DDP comparison turns it off.
    parser.add_argument("--no-jitter", action="store_true")
    parser.add_argument("--record", action="store_true", help="write draws_<rank>.json")
    args = parser.parse_args()
    run(
        args.out_dir,
        args.steps,
        args.kill_at,
        args.ema,
        jitter=not args.no_jitter,
        record=args.record,
    )
