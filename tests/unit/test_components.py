"""What each component adds: pairs of variants, hand-made predictions with known differences."""

import json

import numpy as np
import pandas as pd
import pytest

from dermae.evaluate.ablation_text import ablation_markdown
from dermae.evaluate.components import component_effects, component_lines, component_rows
from dermae.evaluate.paired import paired_metric_fn

K, N = 3, 60
CLASSES = ["bcc", "mel", "nv"]


def frame(probs: np.ndarray) -> pd.DataFrame:
    y = np.arange(N) % K
    out = pd.DataFrame(
        {"image_id": [f"i{i}" for i in range(N)], "group_id": [f"g{i // 2}" for i in range(N)]}
    )
    out["target"] = y
    for k, name in enumerate(CLASSES):
        out[f"p_{name}"] = probs[:, k]
    return out


RIGHT = np.eye(K)[np.arange(N) % K] * 0.9 + 0.1 / K  # every call right
FIRST = np.tile(np.eye(K)[0] * 0.9 + 0.1 / K, (N, 1))  # always "bcc": balanced accuracy 1/K


def effects(frames: dict[str, list[pd.DataFrame]]) -> list[dict]:
    return component_effects(frames, paired_metric_fn([0, 1], 15, np.arange(K)), 200, 0)


def test_each_component_is_the_difference_of_the_variants_that_isolate_it() -> None:
    frames = {
        "b_simple_fix": [frame(FIRST)],
        "c_real_synth": [frame(FIRST)],  # the synthetic images add nothing
        "d_dermae": [frame(RIGHT), frame(RIGHT)],  # KD: everything
        "e_no_mae": [frame(RIGHT)],  # MAE: nothing
        # no (f), no (g): those components are left out, not reported as zero
    }
    out = {e["component"]: e for e in effects(frames)}
    assert list(out) == [
        "synthetic images in the training set",
        "KD from the teacher",
        "MAE pre-training of the teacher",
    ]
    assert out["synthetic images in the training set"]["balanced_accuracy"]["diff"] == 0.0
    kd = out["KD from the teacher"]
    assert (kd["with"], kd["without"], kd["seeds"]) == ("d_dermae", "c_real_synth", [2, 1])
    assert kd["balanced_accuracy"]["diff"] == pytest.approx(1 - 1 / K)
    assert kd["balanced_accuracy"]["ci"] == pytest.approx([1 - 1 / K] * 2)
    assert out["MAE pre-training of the teacher"]["balanced_accuracy"]["diff"] == 0.0

    lines = component_lines(list(out.values()))
    assert lines[1].startswith("- KD from the teacher, (d) − (c) (seeds 2 and 1): balanced")
    assert "+0.667 (+0.667 to +0.667)" in lines[1]
    assert "one seed each" in lines[0]
    rows = component_rows(list(out.values()))
    assert rows[1]["variants"] == "(d) − (c)" and rows[1]["seeds"] == "2 / 1"


def test_variants_scored_on_other_images_are_refused() -> None:
    shuffled = frame(FIRST).iloc[::-1].reset_index(drop=True)
    with pytest.raises(RuntimeError, match="different images"):
        effects({"b_simple_fix": [frame(FIRST)], "c_real_synth": [shuffled]})


def test_the_ablation_report_lists_components_after_the_verdict(tmp_path) -> None:
    from dermae.evaluate.summary import ablation_section

    components = effects({"b_simple_fix": [frame(FIRST)], "c_real_synth": [frame(RIGHT)]})
    summary = {
        "student_arch": "resnet10t",
        "split": "test",
        "verdict": "- c_real_synth - b_simple_fix: +0.667 (+0.6 to +0.7), better than (b)",
        "notes": {},
        "table": [],
        "results": {},
        "paired_bootstrap": {},
        "components": components,
    }
    markdown = ablation_markdown(summary)
    assert markdown.index("better than (b)") < markdown.index("What each component adds")
    assert "- synthetic images in the training set, (c) − (b) (one seed each)" in markdown
    (tmp_path / "ablate").mkdir()
    (tmp_path / "ablate" / "ablation.json").write_text(json.dumps(summary))
    section = ablation_section(tmp_path)
    # in the HTML report the numbers are a table (no paragraph repeats them)
    assert any(p.startswith("What each component adds") for p in section.paragraphs)
    assert not any("(c) − (b)" in p for p in section.paragraphs)
    row = section.tables[-1]["rows"][0]
    assert row["variants"] == "(c) − (b)" and row["balanced accuracy"].startswith("+0.667")
