"""`dermae run` end to end on a small real HAM10000 subset with tiny models (configs/smoke.yaml).

CI runs this so a broken main job is caught; the numbers it produces mean nothing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dermae.config import default_data_root
from dermae.data.toy import write_toy_dataset
from dermae.pipeline import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(default_data_root())
if not DATA.is_absolute():
    DATA = (ROOT / DATA).resolve()

pytestmark = pytest.mark.skipif(
    not (DATA / "labels.csv").exists(),
    reason=f"HAM10000 not found at {DATA}; set DERMAE_DATA to run the smoke pipeline",
)


def _dermae(*args: str, run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DERMAE_DATA": str(DATA), "PYTHONPATH": str(ROOT / "src")}
    cmd = [
        sys.executable,
        "-m",
        "dermae.cli",
        *args,
        "-c",
        str(ROOT / "configs/smoke.yaml"),
        "--run-dir",
        str(run_dir),
    ]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_smoke_pipeline_runs_every_stage_then_skips_them(tmp_path):
    run_dir = tmp_path / "smoke"
    site = tmp_path / "site"  # a generated "other clinic": nevus vs melanoma class folders
    write_toy_dataset(site, layout="folders", classes=["nv", "mel"], lesions_per_class=[6, 6])
    external = f"evaluate.external=[{{name: site, path: {site}, layout: folders}}]"
    first = _dermae("run", "--set", external, run_dir=run_dir)
    assert first.returncode == 0, first.stderr[-4000:]
    for stage in STAGE_NAMES:
        record = json.loads((run_dir / "stages" / f"{stage}.json").read_text())
        assert record["fingerprint"]

    manifest = pd.read_csv(run_dir / "data" / "manifest.csv")
    by_lesion = manifest.groupby("group_id")["split"].nunique()
    assert (by_lesion == 1).all()  # no lesion in two splits
    synthetic = pd.read_csv(run_dir / "data" / "synthetic" / "manifest.csv")
    assert set(synthetic["split"]) == {"train"} and set(synthetic["source"]) == {"synthetic"}

    student = json.loads((run_dir / "evaluate" / "student" / "metrics.json").read_text())
    assert student["split"] == "test"
    assert student["n_images"] == (manifest["split"] == "test").sum()
    assert 0.0 <= student["scalars"]["balanced_accuracy"] <= 1.0
    assert (run_dir / "report.html").stat().st_size > 10_000
    ablation = json.loads((run_dir / "ablate" / "ablation.json").read_text())
    variants = {"a_real_ce", "b_simple_fix", "c_real_synth", "d_dermae", "e_no_mae"}
    assert variants | {"f_no_synth_pretrain", "g_mixup_no_kd", "teacher_ensemble"} <= set(
        ablation["models"]
    )
    assert ablation["reference"] == "b_simple_fix"
    seeds = ablation["seeds"]  # ablate.seeds: 3
    assert seeds["n"] == 3 and len(seeds["models"]["d_dermae"]) == 3
    assert seeds["models"]["b_simple_fix"][1].endswith("baseline_seeds/seed_plus_1/model")
    assert seeds["models"]["b_simple_fix"][2].endswith("ablate/seeds/b_seed_plus_2/model")
    assert "d_dermae - b_simple_fix" in seeds["paired"]
    assert "teacher_ensemble - b_simple_fix" in seeds["paired"]  # the bar, against (b)'s mean
    markdown = (run_dir / "ablate" / "ablation.md").read_text()
    assert markdown.startswith("Verdict over seeds")
    # every variant ran, so every component is measured; (d) has three seeds, (c) one
    components = {e["component"]: e for e in ablation["components"]}
    assert len(components) == 5
    assert components["KD from the teacher"]["seeds"] == [3, 1]
    assert "What each component adds" in markdown
    paired = ablation["external_paired_bootstrap"]["site"]
    assert "d_dermae - b_simple_fix" in paired
    ensemble = json.loads((run_dir / "teacher_ensemble" / "model" / "config.json").read_text())
    # ViT teacher, the baseline, its one extra seed (distill.baseline_seeds: 1) and the
    # cnn_teacher member at 48 px, which sees the student's view cached at 48 px
    assert ensemble["arch"] == "ensemble" and len(ensemble["members"]) == 4
    assert "baseline_seeds/seed_plus_1" in ensemble["member_sources"][2]
    assert "cnn_teacher/seed_plus_1" in ensemble["member_sources"][3]
    assert [m["image_size"] for m in ensemble["members"]] == [32, 32, 32, 48]
    student_config = json.loads((run_dir / "student" / "model" / "config.json").read_text())
    assert student_config["image_size"] == 32
    assert student_config["distilled"]["teacher_view"] == "its own resolution"
    assert (run_dir / "data" / "images_48px.npy").exists()
    assert (run_dir / "export" / "model.onnx").exists()

    second = _dermae("run", "--set", external, run_dir=run_dir)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count("done earlier, skipped") == len(STAGE_NAMES)


def test_a_cnn_only_recipe_trains_no_generator_and_no_vit(tmp_path):
    """The recipe of configs/cpu-phone.yaml at smoke size: real stages, not fakes, must cope
    with the skipped ones (evaluation, ablation, export and report without them)."""
    run_dir = tmp_path / "cnn-only"
    overrides = [
        "distill.teachers=[baseline]",
        "data.include_synthetic=false",
        "ablate.variants=[b,c,d]",
        "ablate.seeds=1",
    ]
    done = _dermae("run", *[a for o in overrides for a in ("--set", o)], run_dir=run_dir)
    assert done.returncode == 0, done.stderr[-4000:]
    skipped = json.loads((run_dir / "stages" / "skipped.json").read_text())
    assert set(skipped) == {"vae", "ldm", "sample", "synth_quality", "pretrain", "finetune"}
    assert not any((run_dir / folder).exists() for folder in ("synth", "pretrain", "teacher"))
    ablation = json.loads((run_dir / "ablate" / "ablation.json").read_text())
    assert {"b_simple_fix", "d_dermae"} <= set(ablation["models"])
    assert "c_real_synth" not in ablation["models"] and "teacher" not in ablation["models"]
    assert ablation["notes"]["c_real_synth"].startswith("skipped")
    assert (run_dir / "export").exists()
    assert "Not run, nothing in this config reads them: vae" in (run_dir / "report.md").read_text()
