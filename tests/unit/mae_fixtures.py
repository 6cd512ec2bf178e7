"""Tiny prepared datasets and a stand-in for the shared loop, for the MAE / fine-tune tests."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MALIGNANT = ["akiec", "bcc", "mel"]


def write_prepared(
    run_dir: Path,
    size: int = 16,
    per_split: dict[str, int] | None = None,
    synthetic: int = 0,
    seed: int = 0,
) -> Path:
    """A prepared dataset under run_dir/data; class c has a bright blob in a class-specific place."""
    per_split = per_split or {"train": 28, "val": 14, "test": 14}
    rng = np.random.default_rng(seed)

    def images_for(labels: np.ndarray) -> np.ndarray:
        imgs = rng.integers(0, 60, size=(len(labels), size, size, 3), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 3)
            h = size // 3
            imgs[i, r * h : (r + 1) * h, q * h : (q + 1) * h, :] += 180
        return imgs

    def manifest(labels, split, source, start):
        return pd.DataFrame(
            {
                "image_id": [f"{source}_{split}_{i}" for i in range(len(labels))],
                "path": "",
                "diagnosis": [CLASSES[c] for c in labels],
                "label": labels,
                "malignant": [int(CLASSES[c] in MALIGNANT) for c in labels],
                "group_id": [f"{source}_{split}_{i}" for i in range(len(labels))],
                "age": 50.0,
                "sex": "male",
                "site": "back",
                "dx_type": "histo",
                "split": split,
                "source": source,
                "cache_index": np.arange(start, start + len(labels)),
            }
        )

    root = Path(run_dir) / "data"
    root.mkdir(parents=True, exist_ok=True)
    frames, arrays, start = [], [], 0
    for split, n in per_split.items():
        labels = np.arange(n) % len(CLASSES)
        frames.append(manifest(labels, split, "real", start))
        arrays.append(images_for(labels))
        start += n
    pd.concat(frames).to_csv(root / "manifest.csv", index=False)
    np.save(root / "images.npy", np.concatenate(arrays))
    if synthetic:
        labels = np.arange(synthetic) % len(CLASSES)
        (root / "synthetic").mkdir(exist_ok=True)
        manifest(labels, "train", "synthetic", 0).to_csv(
            root / "synthetic" / "manifest.csv", index=False
        )
        np.save(root / "synthetic" / "images.npy", images_for(labels))
    info = {
        "class_names": CLASSES,
        "malignant_classes": MALIGNANT,
        "image_size": size,
        "counts": {},
        "skipped": [],
    }
    (root / "info.json").write_text(json.dumps(info))
    return Path(run_dir)


@dataclass
class FakeFitResult:
    task: Any
    model: Any
    step: int
    history: list[dict[str, float]] = field(default_factory=list)


def install_fake_fit(monkeypatch, calls: list[dict[str, Any]], steps: int = 2) -> None:
    """Stand-in for dermae.engine.loop.fit (not yet on main): a few AdamW steps, records its
    arguments. Remove once the real loop lands."""

    def fit(task, train_dataset, cfg, out_dir, model=None, evaluate=None, **kwargs):
        model = model if model is not None else getattr(task, "model", task)
        calls.append(
            {
                "task": task,
                "dataset": train_dataset,
                "cfg": cfg,
                "out_dir": out_dir,
                "model": model,
                "evaluate": evaluate,
                **kwargs,
            }
        )
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr)
        loader = DataLoader(train_dataset, batch_size=min(cfg.batch_size, 8), shuffle=True)
        task.train()
        history = []
        for step, batch in zip(range(steps), loader, strict=False):
            loss = task(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append({"step": step + 1, "loss": loss.item()})
        if evaluate is not None:
            history.append(evaluate(task))
        return FakeFitResult(task, model, len(history), history)

    if "dermae.engine.loop" in sys.modules and hasattr(sys.modules["dermae.engine.loop"], "fit"):
        monkeypatch.setattr(sys.modules["dermae.engine.loop"], "fit", fit)
    else:
        module = types.ModuleType("dermae.engine.loop")
        module.fit = fit
        monkeypatch.setitem(sys.modules, "dermae.engine.loop", module)
