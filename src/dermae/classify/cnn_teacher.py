"""The `cnn_teacher` stage: CNN members of the teacher ensemble, at their own budget and size.

The baseline's extra seeds (`distill.baseline_seeds`) are copies of (b); these need not be.
§25 of BENCHMARKS.md showed why that matters: an ensemble of (b)'s own seeds is barely above
(b)'s mean over seeds, so a student distilled from it has nothing to gain. A member trained
longer, or at twice the student's resolution (it sees lesion detail the 64-px student cannot),
can be a teacher worth distilling while the student keeps (b)'s size and budget.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dermae.classify.baseline import chosen_loss, train_baseline
from dermae.config import BaselineConfig, Config
from dermae.engine.checkpoint import CONFIG_FILE, load_config_json, process_rank

STAGE = "cnn_teacher"
MEMBERS_FILE = "members.json"


def cnn_teacher_dirs(run_dir: str | Path, count: int) -> list[Path]:
    """The classifier folders of the `count` members, in seed order."""
    return [Path(run_dir) / STAGE / f"seed_plus_{k}" / "model" for k in range(1, count + 1)]


def cnn_teacher_members(cfg: Config, run_dir: str | Path) -> list[Path]:
    """The trained members (the `cnn_teacher` entry of `distill.teachers`); a clear error when
    one is missing."""
    folders = cnn_teacher_dirs(run_dir, cfg.cnn_teacher.members)
    if not folders:
        raise ValueError(
            "distill.teachers names 'cnn_teacher' but cnn_teacher.members is 0: set it, or "
            "drop the entry"
        )
    for folder in folders:
        if not (folder / CONFIG_FILE).exists():
            raise FileNotFoundError(
                f"no classifier in {folder}, a member that cnn_teacher.members asks for: run "
                "the pipeline's cnn_teacher stage (`dermae run`), or lower cnn_teacher.members"
            )
    return folders


def train_cnn_teacher(cfg: Config, run_dir: str | Path, resume: bool = True) -> Path:
    """Train `cnn_teacher.members` classifiers at seeds seed + 1, seed + 2, ...; returns
    `<run_dir>/cnn_teacher/` with `members.json` (each member's seed, size and kept score)."""
    tcfg = cfg.cnn_teacher
    folder = Path(run_dir) / STAGE
    folder.mkdir(parents=True, exist_ok=True)
    loss = chosen_loss(run_dir, tcfg.loss) if tcfg.members else tcfg.loss
    size = tcfg.image_size or cfg.data.image_size
    seed = tcfg.train.seed or 0
    members = []
    for k, model_dir in enumerate(cnn_teacher_dirs(run_dir, tcfg.members), start=1):
        member_cfg = BaselineConfig(
            model=tcfg.model,
            loss=loss,
            augment=tcfg.augment,
            drop_rate=tcfg.drop_rate,
            train=dataclasses.replace(tcfg.train, seed=seed + k),
        )
        trained = train_baseline(
            cfg,
            run_dir,
            f"{STAGE}/{model_dir.parent.name}",
            member_cfg,
            resume=resume,
            image_size=size,
        )
        selected = load_config_json(trained).get("selected") or {}
        members.append(
            {"model": str(trained), "seed": seed + k, "image_size": size, "loss": loss, **selected}
        )
    if process_rank() == 0:
        record = {"model": tcfg.model, "loss": loss, "image_size": size, "members": members}
        (folder / MEMBERS_FILE).write_text(json.dumps(record, indent=2))
    return folder


__all__ = ["cnn_teacher_dirs", "cnn_teacher_members", "train_cnn_teacher"]
