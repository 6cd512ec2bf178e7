"""What a training checkpoint was made from, so a stage resumes or skips only when it matches.

A fingerprint is a dict of named parts (settings, data, model structure, upstream artifacts),
each hashed; `digest` hashes them together. When two fingerprints differ, `explain` names
the first difference in one line ("train.lr 0.003 -> 0.0123", "the training data changed").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

# Files of a model folder that define it; others (plots, logs) do not.
ARTIFACT_SUFFIXES = (".safetensors", ".json")


def digest(value: Any) -> str:
    """Short stable hash of a JSON-serialisable value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_signature(module: nn.Module) -> str:
    """Hash of the parameter and buffer names, shapes and dtypes: the architecture."""
    return digest([(k, list(v.shape), str(v.dtype)) for k, v in module.state_dict().items()])


def dataset_fingerprint(dataset: Any) -> str | None:
    """The dataset's own `fingerprint()` (which examples, which labels), when it has one."""
    method = getattr(dataset, "fingerprint", None)
    return method() if callable(method) else None


def artifact_digest(paths: Iterable[str | Path]) -> str:
    """Content hash of upstream model folders or files (weights + configs)."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and file.suffix in ARTIFACT_SUFFIXES:
                h.update(file.name.encode())
                with file.open("rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """'key.sub old -> new' for the first key (sorted) whose value differs, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                return f"{prefix}{key} {'added' if key in new else 'removed'}"
            found = first_difference(old[key], new[key], f"{prefix}{key}.")
            if found:
                return found
        return None
    if old != new:
        return (
            f"{prefix.rstrip('.')} {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"
        )
    return None


PART_WORDS = {
    "data": "the training data (split, rows or labels) changed",
    "model": "the model's architecture changed",
    "upstream": "an upstream artifact (encoder, teacher, VAE) changed",
}


def explain(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """None when `old` matches `new`, else why not, in a few words.

    Both are {"parts": {name: hash}, "settings": {...}} as written by the loop.
    """
    if not old or "parts" not in old:
        return "the checkpoint has no fingerprint (made by an older dermae)"
    for name in [*new["parts"], *(k for k in old["parts"] if k not in new["parts"])]:
        if old["parts"].get(name) == new["parts"].get(name):
            continue
        if name == "settings":
            detail = first_difference(old.get("settings"), new.get("settings"))
            return f"settings changed ({detail})" if detail else "settings changed"
        return PART_WORDS.get(name, f"{name} changed")
    return None


__all__ = [
    "artifact_digest",
    "dataset_fingerprint",
    "digest",
    "explain",
    "first_difference",
    "model_signature",
]
