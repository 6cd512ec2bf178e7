"""`dermae data prepare`: ingest -> (subset) -> decode once -> lesion-grouped split -> files.

Writes `<run_dir>/data/`: manifest.csv, images.npy (+ images.cache.json), skipped.csv,
info.json (written last; it marks the folder complete and records the inputs it was made
from, so a second call with the same data config and the same source files does nothing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from dermae.config import Config, DataConfig
from dermae.data.cache import build_image_cache, check_cache_file
from dermae.data.classes import MALIGNANT_CODES
from dermae.data.errors import DataError
from dermae.data.ingest import detect_layout, fingerprint_tree, ingest_dataset, problems_error
from dermae.data.prepared import MANIFEST_COLUMNS, SPLITS, PreparedData, data_dir, load_prepared
from dermae.data.splits import assign_splits, subset_groups

PREPARE_VERSION = 1
LABEL_MODES = ("diagnosis", "malignant")
BINARY_CLASSES = ["benign", "malignant"]
# Data-config fields that do not change what `prepare` writes (later stages read them).
NOT_IN_KEY = ("include_synthetic", "num_workers")
SKIPPED_COLUMNS = ["row", "file", "reason"]


def resolve_root(root: str | Path) -> Path:
    return Path(root).expanduser().resolve()


def prepare_key(cfg: DataConfig) -> dict:
    """What a prepared folder depends on: the data config and the source files' identity."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_KEY}
    settings["root"] = str(resolve_root(cfg.root))
    return {
        "version": PREPARE_VERSION,
        "config": settings,
        "source_fingerprint": fingerprint_tree(cfg.root),
    }


def _check_config(cfg: DataConfig) -> None:
    if cfg.label not in LABEL_MODES:
        raise DataError(f"data.label='{cfg.label}' is unknown; use one of {LABEL_MODES}")
    if cfg.image_size < 8:
        raise DataError(f"data.image_size={cfg.image_size} is too small; use 8 or more")
    if cfg.limit < 0:
        raise DataError(f"data.limit={cfg.limit} must be 0 (all data) or a number of lesions")


def _is_prepared(out: Path, key: dict) -> bool:
    info_path = out / "info.json"
    if not (
        info_path.exists() and (out / "manifest.csv").exists() and (out / "images.npy").exists()
    ):
        return False
    try:
        if json.loads(info_path.read_text()).get("key") != key:
            return False
    except (OSError, ValueError):
        return False
    # The key says what was made; check that what is on disk is still whole.
    damage = check_cache_file(out / "images.npy")
    if damage:
        print(f"data: {out / 'images.npy'} is damaged ({damage}); rebuilding it")
        return False
    return True


def is_prepared(cfg: DataConfig, run_dir: str | Path) -> bool:
    """True when `<run_dir>/data/` was prepared from this data config and these source files."""
    detect_layout(cfg.root, cfg.layout)
    return _is_prepared(data_dir(run_dir), {**prepare_key(cfg), "external": False})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: leave no half-written file behind
        raise


def _set_aside_synthetic(out: Path) -> None:
    """Synthetic images made from an earlier split may have been conditioned on what is now
    val/test data; keep them out of the way (not deleted) rather than let them leak."""
    synth = out / "synthetic"
    if synth.exists():
        stale = out / "synthetic.stale"
        if stale.exists():
            shutil.rmtree(stale)
        os.replace(synth, stale)
        print(f"data: the split changed, so {synth} was moved to {stale}; sample again")


def _counts_table(manifest: pd.DataFrame, class_names: list[str]) -> dict:
    table = pd.crosstab(manifest["split"], manifest["diagnosis"])
    return {
        s: {
            c: int(table.at[s, c]) if s in table.index and c in table.columns else 0
            for c in class_names
        }
        for s in SPLITS
    }


def summary_text(info: dict) -> str:
    """A few lines: images / lesions per split and class, skipped and converted counts."""
    classes = info["diagnoses"]
    width = max(6, *(len(c) + 1 for c in classes))
    lines = [
        f"data: {info['n_images']} images of {info['n_groups']} lesions, layout {info['layout']}, "
        f"{info['image_size']} px, from {info['source']}",
        " " * 6 + "".join(f"{c:>{width}}" for c in classes) + f"{'total':>8}",
    ]
    for split in SPLITS:
        row = info["counts"][split]
        cells = "".join(f"{row[c]:>{width}}" for c in classes)
        lines.append(f"{split:<6}{cells}{sum(row.values()):>8}")
    converted = ", ".join(f"{k} {v}" for k, v in info["converted"].items()) or "none"
    lines.append(f"skipped: {info['skipped']}, converted to RGB: {converted}")
    return "\n".join(lines)


def prepare_dataset(
    cfg: DataConfig, run_dir: str | Path, progress: bool = True, force: bool = False
) -> PreparedData:
    """Write `<run_dir>/data/` for `cfg` (skipped when already there) and load it."""
    return _prepare(cfg, run_dir, progress, force, external=False)


def prepare_stage(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Pipeline stage `prepare`; returns `<run_dir>/data`. (`resume` is moot: prepare is
    idempotent and its image cache is reused.)"""
    prepare_dataset(cfg.data, run_dir)
    return data_dir(run_dir)


def prepare_external(
    cfg: DataConfig,
    root: str | Path,
    run_dir: str | Path,
    progress: bool = True,
    layout: str = "auto",
) -> PreparedData:
    """An external evaluation set at `root` (any layout), cached like the run's data with the
    same image size, every image in the "test" split, written to `<run_dir>/data/`. Nothing is
    subset; labels index the set's own classes (the evaluator matches them by diagnosis), and
    rows known only as benign/malignant (a diagnosis outside the vocabulary) get label -1."""
    external = dataclasses.replace(cfg, root=str(root), layout=layout, limit=0)
    return _prepare(external, run_dir, progress, force=False, external=True)


def _prepare(
    cfg: DataConfig, run_dir: str | Path, progress: bool, force: bool, external: bool
) -> PreparedData:
    _check_config(cfg)
    out = data_dir(run_dir)
    detect_layout(cfg.root, cfg.layout)  # fails early with a clear message
    key = {**prepare_key(cfg), "external": external}
    if not force and _is_prepared(out, key):
        info = json.loads((out / "info.json").read_text())
        print(f"data: {out} is up to date ({info['n_images']} images); nothing to do")
        return load_prepared(run_dir)

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "info.json").unlink(missing_ok=True)  # incomplete until rewritten at the end
    _set_aside_synthetic(out)

    # Ingest never raises for bad rows here: its problems and the decode failures below are
    # reported together, so one run shows everything to fix.
    ingested = ingest_dataset(
        cfg.root,
        cfg.layout,
        skip_bad=True,
        evaluation_only=external,
        missing_lesions=cfg.group_missing_lesions,
        allow_outside_root=cfg.allow_outside_root,
    )
    for note in ingested.notes:
        print(f"data: note: {note}")
    skipped = list(ingested.skipped)
    rows = subset_groups(ingested.rows, cfg.limit, seed=cfg.split_seed).reset_index(drop=True)

    cache = build_image_cache(
        list(rows["path"]), cfg.image_size, out / "images.npy", progress, cfg.num_workers
    )
    rows["cache_index"] = range(len(rows))
    if cache.failures:
        bad = rows.loc[sorted(cache.failures)]
        skipped += [
            {
                "row": ingested.source_rows.get(image_id, ""),
                "file": path,
                "reason": cache.failures[i].removeprefix(f"{path}: "),
            }
            for i, image_id, path in zip(bad.index, bad["image_id"], bad["path"], strict=True)
        ]
        rows = rows.drop(index=bad.index)
    if skipped and not cfg.skip_bad:
        raise problems_error(skipped, str(ingested.source))

    present = set(rows["diagnosis"])
    diagnoses = [c for c in ingested.class_names if c in present]
    lost = [c for c in ingested.class_names if c not in present]
    if lost:  # every image of a class failed to decode (only reachable with skip_bad)
        skipped += [
            {
                "row": "",
                "file": str(ingested.source),
                "reason": f"class '{c}' has no readable images",
            }
            for c in lost
        ]

    if external:
        rows["split"] = "test"
    else:
        rows["split"] = assign_splits(rows, cfg.val_frac, cfg.test_frac, seed=cfg.split_seed)
    if cfg.label == "malignant":
        class_names = BINARY_CLASSES
        malignant_classes = ["malignant"]
        rows["label"] = rows["malignant"].astype(int)
    else:
        class_names = diagnoses
        malignant_classes = [c for c in class_names if c in MALIGNANT_CODES]
        index = {c: i for i, c in enumerate(class_names)}
        rows["label"] = rows["diagnosis"].map(index).fillna(-1).astype(int)

    manifest = rows[MANIFEST_COLUMNS]
    _write_atomic(out / "manifest.csv", manifest.to_csv(index=False))
    _write_atomic(
        out / "skipped.csv", pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).to_csv(index=False)
    )

    counts = _counts_table(manifest, diagnoses)
    lesions = manifest.groupby(["split"])["group_id"].nunique().to_dict()
    info = {
        "class_names": class_names,
        "malignant_classes": malignant_classes,
        "image_size": cfg.image_size,
        "label": cfg.label,
        "diagnoses": diagnoses,
        "counts": counts,  # images per split x diagnosis
        "lesions": {s: int(lesions.get(s, 0)) for s in SPLITS},
        "n_images": len(manifest),
        "n_groups": int(manifest["group_id"].nunique()),
        "skipped": len(skipped),
        "skipped_file": "skipped.csv",
        "converted": cache.converted,  # original image mode -> images converted to RGB
        "layout": ingested.layout,
        "external": external,  # an evaluation-only set: every image in "test"
        "source": str(ingested.source),
        "root": str(resolve_root(cfg.root)),
        "notes": ingested.notes,
        # Rows without lesion_id that data.group_missing_lesions=image made their own lesion.
        "missing_lesion_ids": ingested.missing_lesions,
        "cache": {"key": cache.key, "reused": cache.reused, "seconds": round(cache.seconds, 2)},
        "seconds": round(time.perf_counter() - start, 2),
        "key": key,
        "key_hash": hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16],
    }
    _write_atomic(out / "info.json", json.dumps(info, indent=1))
    print(summary_text(info))
    return load_prepared(run_dir)
