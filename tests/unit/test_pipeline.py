import json

import pytest

from dermae import pipeline
from dermae.config import load_config


@pytest.fixture
def fake_stages(monkeypatch):
    """Replace every stage by a recorder so the orchestration alone is tested."""
    calls: list[tuple[str, bool]] = []

    def make(name):
        def stage(cfg, run_dir, resume=True):
            calls.append((name, resume))
            if name == "ldm" and getattr(stage, "fail_once", False):
                stage.fail_once = False
                raise RuntimeError("killed")
            (run_dir / name).mkdir(parents=True, exist_ok=True)  # a done stage has outputs
            return run_dir / name

        return stage

    funcs = {s.name: make(s.name) for s in pipeline.STAGES}
    monkeypatch.setattr(
        pipeline,
        "_call",
        lambda target: funcs[next(s.name for s in pipeline.STAGES if s.target == target)],
    )
    return calls, funcs


def test_skips_done_stages_and_reruns_changed_downstream(tmp_path, fake_stages):
    calls, _ = fake_stages
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    pipeline.run_pipeline(cfg)
    assert [c[0] for c in calls] == list(pipeline.STAGE_NAMES)
    calls.clear()
    pipeline.run_pipeline(cfg)
    assert calls == []  # everything done, same config
    changed = load_config(None, [f"run_dir={tmp_path}", "distill.alpha=0.5"])
    pipeline.run_pipeline(changed)
    assert [c[0] for c in calls] == ["distill", "evaluate", "ablate", "export", "report"]
    # New fingerprint: no stale resume, except in the ablation, whose trainings each resume
    # only a checkpoint of their own unchanged fingerprint (one more seed retrains nothing else).
    assert [resume for _, resume in calls] == [False, False, True, False, False]
    calls.clear()
    seeds = load_config(None, [f"run_dir={tmp_path}", "distill.alpha=0.5", "ablate.seeds=2"])
    pipeline.run_pipeline(seeds)
    assert calls == [("ablate", True), ("report", False)]


def test_interrupted_stage_resumes_then_from_reruns(tmp_path, fake_stages):
    calls, funcs = fake_stages
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    funcs["ldm"].fail_once = True
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(cfg)
    calls.clear()
    pipeline.run_pipeline(cfg)
    assert calls[0] == ("ldm", True)  # started earlier with the same config: resume
    calls.clear()
    pipeline.run_pipeline(cfg, from_stage="export")
    assert calls == [("export", False), ("report", False)]
    record = json.loads((tmp_path / "stages" / "export.json").read_text())
    assert record["output"].endswith("export")


def test_a_moved_run_or_another_working_directory_reruns_nothing(
    tmp_path, fake_stages, monkeypatch
):
    calls, _ = fake_stages
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    pipeline.run_pipeline(load_config(None, ["run_dir=runs/x"]))  # relative, as configs say
    calls.clear()
    monkeypatch.chdir(tmp_path)
    pipeline.run_pipeline(load_config(None, [f"run_dir={tmp_path / 'first' / 'runs' / 'x'}"]))
    assert calls == []
    (tmp_path / "first" / "runs" / "x").rename(tmp_path / "moved")
    out = pipeline.run_stage(load_config(None, [f"run_dir={tmp_path / 'moved'}"]), "export")
    assert calls == [] and out == tmp_path / "moved" / "export"


def test_unknown_stage_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'sampel'"):
        pipeline.run_pipeline(load_config(None, [f"run_dir={tmp_path}"]), from_stage="sampel")


def _model_stage(calls):
    """A baseline stage that writes a real safetensors model and records its lr."""
    import torch
    from safetensors.torch import save_file

    def stage(cfg, run_dir, resume=True):
        calls.append((cfg.baseline.train.lr, resume))
        out = run_dir / "baseline" / "model"
        out.mkdir(parents=True, exist_ok=True)
        save_file({"w": torch.zeros(64, 64)}, str(out / "model.safetensors"))
        (out / "config.json").write_text("{}")
        return out

    return stage


def test_truncated_finished_model_is_not_reported_done(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pipeline, "_call", lambda target: _model_stage(calls))
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    pipeline.run_stage(cfg, "baseline")
    pipeline.run_stage(cfg, "baseline")
    assert len(calls) == 1  # done, outputs whole: skipped
    model = tmp_path / "baseline" / "model" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    capsys.readouterr()
    pipeline.run_stage(cfg, "baseline")
    assert "model.safetensors has 1000 bytes" in capsys.readouterr().out
    assert calls[-1] == (cfg.baseline.train.lr, True) and len(calls) == 2  # ran again


def test_stage_command_uses_the_pipeline_marks(tmp_path, monkeypatch, capsys):
    """`dermae train --set baseline.train.lr=X` retrains, and `dermae run` sees what it made."""
    calls = []
    monkeypatch.setattr(pipeline, "_call", lambda target: _model_stage(calls))
    target = pipeline._stage("baseline").target
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    pipeline.run_command(cfg, target)
    pipeline.run_command(cfg, target)
    assert len(calls) == 1
    changed = load_config(None, [f"run_dir={tmp_path}", "baseline.train.lr=0.0123"])
    capsys.readouterr()
    pipeline.run_command(changed, target)
    assert calls[-1] == (0.0123, False)
    assert (
        f"baseline.train.lr {json.dumps(cfg.baseline.train.lr)} -> 0.0123"
        in capsys.readouterr().out
    )
    pipeline.run_command(changed, target, resume=False)  # --no-resume: from scratch
    assert calls[-1] == (0.0123, False) and len(calls) == 3
    # The pipeline with the original config now retrains the baseline it did not make.
    pipeline.run_stage(cfg, "baseline")
    assert calls[-1] == (cfg.baseline.train.lr, False)


def test_downstream_follows_the_upstream_as_made(tmp_path, fake_stages):
    calls, _ = fake_stages
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    pipeline.run_pipeline(cfg, until_stage="finetune")
    calls.clear()
    # pretrain rerun by its own command with other settings: finetune is stale for `run`.
    pipeline.run_stage(
        load_config(None, [f"run_dir={tmp_path}", "pretrain.mask_ratio=0.5"]), "pretrain"
    )
    calls.clear()
    pipeline.run_stage(cfg, "finetune")
    assert calls == [("finetune", False)]


def test_every_stage_command_goes_through_a_pipeline_stage():
    from dermae import cli

    targets = {s.target for s in pipeline.STAGES}
    commands = {**cli.STAGE_COMMANDS, **{f"synth {k}": v for k, v in cli.SYNTH_COMMANDS.items()}}
    assert {name: target in targets for name, (target, _) in commands.items()} == {
        name: True for name in commands
    }


def test_external_sets_and_bootstrap_size_retrain_nothing():
    from dermae.config import load_config
    from dermae.pipeline import fingerprints

    base = fingerprints(load_config("configs/smoke.yaml"))
    external = "evaluate.external=[{name: site, path: /tmp/site}]"
    changed = fingerprints(load_config("configs/smoke.yaml", [external, "evaluate.bootstrap=7"]))
    trained = ("baseline", "vae", "ldm", "sample", "pretrain", "finetune", "distill")
    assert all(base[s] == changed[s] for s in trained)
    assert base["evaluate"] != changed["evaluate"] and base["ablate"] != changed["ablate"]
    thresholds = fingerprints(load_config("configs/smoke.yaml", ["evaluate.specificities=[0.8]"]))
    assert base["baseline"] != thresholds["baseline"]


def test_extra_baseline_seeds_retrain_the_teacher_side_only():
    from dermae.config import load_config
    from dermae.pipeline import fingerprints

    base = fingerprints(load_config("configs/smoke.yaml"))
    more = fingerprints(load_config("configs/smoke.yaml", ["distill.baseline_seeds=2"]))
    same = ("prepare", "baseline", "vae", "ldm", "sample", "synth_quality", "pretrain", "finetune")
    assert all(base[s] == more[s] for s in same)
    assert all(base[s] != more[s] for s in ("baseline_seeds", "distill", "ablate", "report"))


def test_a_later_key_at_its_off_value_leaves_every_stage_fingerprint_as_before():
    from dermae.config import fingerprint_tree, load_config
    from dermae.pipeline import fingerprints

    off = load_config(None, [])
    assert "mixup" not in fingerprint_tree(off)["baseline"]  # as runs before the key hashed it
    on = load_config(None, ["baseline.mixup=0.4"])
    assert fingerprint_tree(on)["baseline"]["mixup"] == 0.4
    changed = {k for k, v in fingerprints(on).items() if fingerprints(off)[k] != v}
    assert {"baseline", "distill", "ablate"} <= changed and "vae" not in changed


def test_a_perceptual_vae_is_downstream_of_the_baseline_and_only_then():
    from dermae.config import fingerprint_tree
    from dermae.pipeline import _downstream, fingerprints

    plain, perceptual = [], ["vae.perceptual_weight=0.1"]
    assert "perceptual_weight" not in fingerprint_tree(load_config(None, plain))["vae"]
    for extra, vae_follows in ((plain, False), (perceptual, True)):
        base = fingerprints(load_config(None, extra))
        lr = fingerprints(load_config(None, [*extra, "baseline.train.lr=0.01"]))
        assert (base["vae"] != lr["vae"]) is vae_follows
        assert ("vae" in _downstream({"baseline"}, load_config(None, extra))) is vae_follows
    assert (
        fingerprints(load_config(None, plain))["vae"]
        != fingerprints(load_config(None, perceptual))["vae"]
    )


CNN_ONLY = ["distill.teachers=[baseline]", "data.include_synthetic=false", "ablate.variants=[b,d]"]


def test_stages_nothing_reads_are_skipped_and_listed(tmp_path, fake_stages, capsys):
    calls, _ = fake_stages
    cfg = load_config(None, [f"run_dir={tmp_path}", *CNN_ONLY])
    pipeline.run_pipeline(cfg)
    unused = ["vae", "ldm", "sample", "synth_quality", "pretrain", "finetune"]
    assert [c[0] for c in calls] == [s for s in pipeline.STAGE_NAMES if s not in unused]
    skipped = json.loads((tmp_path / "stages" / "skipped.json").read_text())
    assert sorted(skipped) == sorted(unused)
    assert "data.include_synthetic is false" in skipped["vae"]
    assert "has no 'teacher'" in skipped["finetune"]
    assert "vae: not needed, skipped (data.include_synthetic is false)" in capsys.readouterr().out
    calls.clear()
    pipeline.run_pipeline(cfg)
    assert calls == []  # the skipped stages' missing marks do not make the others stale
    # The same run dir with the whole recipe: the skipped stages run now.
    pipeline.run_pipeline(load_config(None, [f"run_dir={tmp_path}"]))
    assert set(unused) <= {name for name, _ in calls}
    assert json.loads((tmp_path / "stages" / "skipped.json").read_text()) == {}


def test_what_each_recipe_needs():
    from dermae.needs import GENERATOR_STAGES, unneeded_stages

    def unneeded(*overrides):
        return set(unneeded_stages(load_config(None, list(overrides))))

    assert unneeded() == set()  # the DerMAE recipe reads every stage
    assert unneeded("finetune.init=scratch") == {"pretrain"}
    assert unneeded("distill.teachers=[baseline]") == {"pretrain", "finetune"}
    # Synthetic images unread by anyone: the student and the ViT take none.
    no_synth = ["pretrain.synthetic_ratio=0", "finetune.synthetic_ratio=0"]
    assert unneeded(*no_synth) == set()  # the student still reads them
    assert unneeded(*no_synth, "distill.synthetic_ratio=0") == set(GENERATOR_STAGES)
    # The ViT from scratch still reads them through finetune.
    assert unneeded("finetune.init=scratch", "distill.synthetic_ratio=0") == {"pretrain"}
    assert unneeded("data.include_synthetic=false") == set(GENERATOR_STAGES)


def test_the_phone_config_trains_no_generator_and_no_vit():
    from dermae.needs import GENERATOR_STAGES, unneeded_stages

    phone = unneeded_stages(load_config("configs/cpu-phone.yaml"))
    assert set(phone) == {*GENERATOR_STAGES, "pretrain", "finetune"}
    for whole_recipe in ("cpu-full", "cpu-full-phone", "demo", "smoke"):
        assert unneeded_stages(load_config(f"configs/{whole_recipe}.yaml")) == {}
