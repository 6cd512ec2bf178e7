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
    assert all(resume is False for _, resume in calls)  # new fingerprint: no stale resume


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


def test_unknown_stage_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'sampel'"):
        pipeline.run_pipeline(load_config(None, [f"run_dir={tmp_path}"]), from_stage="sampel")
