"""Which pipeline stages a config has no use for, and why.

A config that distils only CNN teachers on real images (BENCHMARKS.md sections 27-29) would
otherwise still train a VAE, a UNet, an MAE and a ViT teacher that nothing reads: about half
an hour of a 2-core CPU. `dermae run` skips such stages and says why; their own commands
(`dermae synth ...`, `dermae pretrain`, `dermae finetune`) still run them on request.
"""

from __future__ import annotations

from dermae.config import Config

GENERATOR_STAGES = ("vae", "ldm", "sample", "synth_quality")


def synthetic_readers(cfg: Config) -> list[str]:
    """The steps of this config's recipe that read synthetic images."""
    if not cfg.data.include_synthetic:
        return []
    # The ablation's (e) and (f) need the ViT teacher (the config refuses them without it),
    # so the pretrain and finetune readers cover them too.
    vit_teacher = "teacher" in cfg.distill.teachers
    readers = []
    if vit_teacher and cfg.finetune.init == "mae" and cfg.pretrain.synthetic_ratio > 0:
        readers.append("pretrain")
    if vit_teacher and cfg.finetune.synthetic_ratio > 0:
        readers.append("finetune")
    if cfg.distill.synthetic_ratio > 0:
        readers.append("distill")  # and the ablation's (c), which shares its ratio
    return readers


def unneeded_stages(cfg: Config) -> dict[str, str]:
    """Stage name -> why nothing in this config reads its output."""
    unneeded: dict[str, str] = {}
    if "teacher" not in cfg.distill.teachers:
        why = (
            f"distill.teachers {list(cfg.distill.teachers)} has no 'teacher', "
            "so nothing reads the MAE ViT"
        )
        unneeded["pretrain"] = why
        unneeded["finetune"] = why
    elif cfg.finetune.init != "mae":
        unneeded["pretrain"] = f"finetune.init is '{cfg.finetune.init}': no encoder to read"
    if not synthetic_readers(cfg):
        why = (
            "data.include_synthetic is false"
            if not cfg.data.include_synthetic
            else "no stage of this recipe reads synthetic images (their synthetic_ratio is 0)"
        )
        unneeded.update(dict.fromkeys(GENERATOR_STAGES, why))
    return unneeded
