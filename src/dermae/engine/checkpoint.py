"""Checkpoints as folders: `model.safetensors` + `config.json` (+ `training_state/`).

Written to a temporary sibling folder, then renamed, so a killed process never
leaves a half-written checkpoint. Nothing is unpickled: weights are safetensors,
optimizer state is loaded with `torch.load(weights_only=True)`, RNG state is JSON
plus safetensors.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_DIR = "training_state"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
NO_RESUME_HINT = "rerun with --no-resume to train afresh"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the way out."""


def check_safetensors(path: str | Path) -> None:
    """Raise `CheckpointError` unless `path` is a complete safetensors file.

    `safe_open` parses the header and checks that the data it declares covers the file,
    so a truncated file fails here, cheaply, without reading any tensor.
    """
    path = Path(path)
    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError) as err:
        size = path.stat().st_size if path.exists() else "missing"
        raise CheckpointError(f"{path} is damaged ({err}; {size} bytes)") from err


def _contiguous_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone keeps it simple.
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def process_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def atomic_dir(final: Path) -> Path:
    """A fresh temporary folder next to `final`; pass it to `commit_dir`.

    Under DDP every rank may run a stage's saving code; only rank 0's folder is committed
    (the others write to their own scratch folder, which `commit_dir` drops), so ranks never
    race on one path.
    """
    final = Path(final)
    rank = process_rank()
    tmp = final.with_name(final.name + (".tmp" if rank == 0 else f".tmp-rank{rank}"))
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


_collective = False  # see collective_saves()


@contextmanager
def collective_saves() -> Iterator[None]:
    """While every rank runs the same stage code (a training stage under DDP), `commit_dir`
    ends with a barrier, so no rank reads a folder before rank 0 has committed it."""
    global _collective
    before, _collective = _collective, True
    try:
        yield
    finally:
        _collective = before


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` on rank 0; other ranks drop their tmp (and, inside
    `collective_saves`, wait until rank 0 has committed)."""
    if process_rank() == 0:
        replace_dir(tmp, final)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if _collective and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def replace_dir(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` (rename; the old folder is removed first), in this process only."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def write_model_files(directory: Path, module: nn.Module, config: dict[str, Any]) -> None:
    """Weights + JSON config into an existing folder (not atomic; see `save_model`)."""
    save_file(_contiguous_state(module), str(Path(directory) / MODEL_FILE))
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))


def save_model(directory: str | Path, module: nn.Module, config: dict[str, Any]) -> Path:
    """Save weights + JSON config atomically. `config` must be JSON-serialisable."""
    directory = Path(directory)
    tmp = atomic_dir(directory)
    write_model_files(tmp, module, config)
    commit_dir(tmp, directory)
    return directory


def load_config_json(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {directory} a dermae checkpoint folder?")
    return json.loads(path.read_text())


def load_weights(directory: str | Path, module: nn.Module, strict: bool = True) -> Any:
    path = Path(directory) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {directory} a dermae checkpoint folder?")
    check_safetensors(path)
    try:
        return module.load_state_dict(load_file(str(path)), strict=strict)
    except RuntimeError as err:  # missing/unexpected keys or shapes: another architecture
        first = str(err).strip().splitlines()[:3]
        raise CheckpointError(
            f"{path} does not fit this model ({' '.join(first)[:300]}...)"
        ) from err


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the python, numpy and torch RNG states."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    tensors = {
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    return meta, tensors


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, gauss_np = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, gauss_np))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def _rng_file(rank: int) -> str:
    return f"rng_{rank}.safetensors"


def save_training_state(
    directory: Path,
    optimizer: torch.optim.Optimizer | None,
    progress: dict[str, Any],
    extra_modules: dict[str, nn.Module] | None = None,
    rng_states: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = None,
) -> None:
    """Write optimizer, RNG and progress into `directory/training_state` (caller commits).

    `rng_states` holds one `rng_state()` per process (index = rank); default: this process's.
    `optimizer` None: a finished training, whose `progress` must say `finished`.
    """
    if optimizer is None and not progress.get("finished"):
        raise ValueError("only a finished training may be saved without its optimizer state")
    state_dir = Path(directory) / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), state_dir / OPTIMIZER_FILE)
    rng_states = rng_states or [rng_state()]
    for rank, (_, tensors) in enumerate(rng_states):
        save_file(tensors, str(state_dir / _rng_file(rank)))
    meta = {"progress": progress, "rng": [m for m, _ in rng_states]}
    (state_dir / STATE_FILE).write_text(json.dumps(meta))
    for name, module in (extra_modules or {}).items():
        save_file(_contiguous_state(module), str(state_dir / f"{name}.safetensors"))


def _damaged(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is damaged or from another model ({type(err).__name__}: {err})")


def load_training_state(
    directory: Path,
    optimizer: torch.optim.Optimizer,
    extra_modules: dict[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Restore optimizer and extra modules; returns progress. Call `restore_rng` last.

    Any unreadable file raises `CheckpointError` naming it (never a bare torch traceback).
    """
    state_dir = Path(directory) / STATE_DIR
    progress = read_progress(directory)
    path = state_dir / OPTIMIZER_FILE
    # A finished training keeps no optimizer state (see `fit`, `dermae prune`).
    if path.exists() or not progress.get("finished"):
        try:
            optimizer.load_state_dict(torch.load(path, weights_only=True))
        except Exception as err:  # EOF, unpickling, wrong param groups: all mean "damaged"
            raise _damaged(path, err) from err
    for name, module in (extra_modules or {}).items():
        path = state_dir / f"{name}.safetensors"
        check_safetensors(path)
        try:
            module.load_state_dict(load_file(str(path)))
        except RuntimeError as err:
            raise _damaged(path, err) from err
    return progress


def read_progress(directory: Path) -> dict[str, Any]:
    """The saved progress (step, best, seconds, finished) of a checkpoint folder."""
    path = Path(directory) / STATE_DIR / STATE_FILE
    try:
        return json.loads(path.read_text())["progress"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _damaged(path, err) from err


def restore_rng(directory: Path, rank: int = 0) -> bool:
    """Restore process `rank`'s RNG state; False when the checkpoint holds none for it."""
    state_dir = Path(directory) / STATE_DIR
    metas = json.loads((state_dir / "state.json").read_text())["rng"]
    path = state_dir / _rng_file(rank)
    if rank >= len(metas) or not path.exists():
        return False
    check_safetensors(path)
    set_rng_state(metas[rank], load_file(str(path)))
    return True


def seed_everything(seed: int, device_specific: bool = False) -> None:
    """python, numpy and torch (CPU + CUDA) RNGs; `device_specific` adds the process index."""
    set_seed(seed, device_specific=device_specific)
