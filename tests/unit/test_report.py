"""HTML/Markdown report: self-contained HTML, embedded images, fixed intended-use notice."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image as PILImage

from dermae.evaluate.report import (
    INTENDED_USE,
    Section,
    Table,
    format_ci,
    metrics_table,
    render_report,
)
from dermae.evaluate.summary import fidelity_paragraph, metrics_section, vae_ceiling_paragraph


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data"):
                self.urls.append((tag, name, value or ""))


def make_png(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", (20, 10), color).save(path)
    return path


def test_format_ci_and_metrics_table() -> None:
    assert format_ci(0.8123, (0.7811, 0.8399)) == "0.812 (0.781–0.840)"
    assert format_ci(0.8123) == "0.812"
    assert format_ci(None, (0.1, 0.2)) == "n/a"
    assert format_ci(0.5, (None, None)) == "0.500"
    assert format_ci(0.5, (0.4, 0.6), digits=1) == "0.5 (0.4–0.6)"
    rows = metrics_table(
        {"baseline": {"accuracy": 0.7, "malignant_auroc": None, "note": "x"},
         "student": {"accuracy": 0.75, "malignant_auroc": 0.9}},
        cis={"student": {"accuracy": (0.7, 0.8), "malignant_auroc": (0.85, 0.93)}},
    )  # fmt: skip
    assert rows == [
        {"metric": "accuracy", "baseline": "0.700", "student": "0.750 (0.700–0.800)"},
        {"metric": "malignant_auroc", "baseline": "n/a", "student": "0.900 (0.850–0.930)"},
    ]
    labelled = metrics_table({"m": {"ece": 0.05}}, metrics={"ece": "ECE (15 bins)"})
    assert labelled == [{"metric": "ECE (15 bins)", "m": "0.050"}]


def test_render_report(tmp_path: Path) -> None:
    out_dir = tmp_path / "report"
    inside = make_png(out_dir / "figs" / "roc.png", (255, 0, 0))
    outside = make_png(tmp_path / "elsewhere" / "cm.png", (0, 0, 255))
    sections = [
        Section(
            "Results <test>",
            paragraphs=["Evaluated on the test split; see https://example.org for nothing."],
            tables=[
                Table(
                    [{"metric": "accuracy", "value": 0.81234}, {"metric": "x|y", "value": None}],
                    caption="Headline",
                ),
                pd.DataFrame({"class": ["mel", "nv"], "support": [10, 90]}),
            ],  # fmt: skip
            images=[(inside, "ROC curves"), outside],
        ),
        {"title": "Extra", "paragraphs": "one paragraph <script>alert(1)</script>"},
    ]
    html_path, md_path = render_report(sections, out_dir, title="Eval & more")
    assert (html_path, md_path) == (out_dir / "report.html", out_dir / "report.md")
    text = html_path.read_text(encoding="utf-8")

    parser = Links()
    parser.feed(text)
    assert parser.urls, "images must be there"
    for tag, name, value in parser.urls:
        assert not value.lower().startswith(("http:", "https:", "//", "file:")), (tag, name)
    assert {t for t in parser.tags} & {"script", "link", "iframe"} == set()
    srcs = [v for t, n, v in parser.urls if t == "img"]
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == inside.read_bytes()
    assert base64.b64decode(srcs[1].split(",", 1)[1]) == outside.read_bytes()

    # fixed notice first, user text escaped, values formatted
    assert text.index("Intended use") < text.index("Results &lt;test&gt;")
    for paragraph in INTENDED_USE:
        assert paragraph.split(".")[0] in text
    assert "CC BY-NC 4.0" in text and "Sci. Data 5, 180161 (2018)" in text
    assert "not a diagnostic device" in text
    assert "&lt;script&gt;" in text and "<script>" not in text
    assert "<td>0.812</td>" in text and "<td>n/a</td>" in text
    assert "<title>Eval &amp; more</title>" in text

    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# Eval & more")
    assert "## Intended use" in md and "CC BY-NC 4.0" in md
    assert "![ROC curves](figs/roc.png)" in md
    assert "![cm](figures/cm.png)" in md
    assert (out_dir / "figures" / "cm.png").read_bytes() == outside.read_bytes()
    assert "| metric | value |" in md and "| accuracy | 0.812 |" in md
    assert "| x\\|y | n/a |" in md
    assert "| mel | 10 |" in md


def test_report_without_sections_still_has_notice(tmp_path: Path) -> None:
    html_path, md_path = render_report([], tmp_path)
    assert "not a diagnostic device" in html_path.read_text()
    assert "Tschandl" in md_path.read_text()


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        render_report([Section("A", images=[tmp_path / "missing.png"])], tmp_path)
    with pytest.raises(TypeError, match="a table must be"):
        render_report([Section("A", tables=[42])], tmp_path)


def test_data_section_counts_only_accepted_synthetic_images(tmp_path: Path) -> None:
    from dermae.data.prepared import ACCEPTED_FILE
    from dermae.evaluate.summary import data_section

    data = tmp_path / "data"
    (data / "synthetic").mkdir(parents=True)
    (data / "info.json").write_text(
        '{"class_names": ["mel", "nv"], "image_size": 64, "missing_lesion_ids": 3}'
    )
    pd.DataFrame(
        {
            "image_id": ["r0", "r1", "r2", "r3"],
            "group_id": ["g0", "g1", "g2", "g3"],
            "split": ["train", "train", "train", "test"],
            "diagnosis": ["mel", "nv", "nv", "mel"],
        }
    ).to_csv(data / "manifest.csv", index=False)
    pd.DataFrame({"image_id": ["s0", "s1", "s2"], "diagnosis": ["mel"] * 3}).to_csv(
        data / "synthetic" / "manifest.csv", index=False
    )
    pd.DataFrame({"image_id": ["s0", "s1", "s2"], "accepted": [True, False, False]}).to_csv(
        data / "synthetic" / ACCEPTED_FILE, index=False
    )

    section = data_section(tmp_path, tmp_path / "figures")

    rows = {r["class"]: r for r in section.tables[0]["rows"]}
    assert rows["mel"]["synthetic added"] == 1  # 1 of 3 generated passed the filter
    assert rows["mel"]["train after balancing"] == 2
    assert rows["nv"]["train after balancing"] == 2
    assert any("3 images had no lesion id" in p for p in section.paragraphs)


def test_report_finds_plots_of_a_moved_run(tmp_path):
    # metrics.json records plot paths relative to the cwd it ran in; the report must look
    # beside metrics.json instead, so a copied run dir renders.
    folder = tmp_path / "evaluate" / "student"
    folder.mkdir(parents=True)
    (folder / "confusion.png").write_bytes(b"png")
    result = {
        "arch": "resnet10t",
        "n_images": 4,
        "n_lesions": 3,
        "bootstrap": {"resamples": 10},
        "scalars": {"balanced_accuracy": 0.5},
        "ci95": {},
        "metrics": {"per_class": {}},
        "subgroups": [],
        "plots": {"confusion": "runs/elsewhere/evaluate/student/confusion.png"},
    }
    (folder / "metrics.json").write_text(json.dumps(result))
    details = metrics_section(tmp_path)[1]
    assert [Path(p) for p in details.images] == [folder / "confusion.png"]


def test_timings_name_the_stages_the_config_did_not_need(tmp_path: Path) -> None:
    from dermae.evaluate.summary import timings_section

    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "timings.jsonl").write_text(
        '{"stage": "baseline", "seconds": 12.0}\n{"stage": "distill", "seconds": 30.5}\n'
    )
    why = "data.include_synthetic is false"
    (stages / "skipped.json").write_text(json.dumps({"vae": why, "ldm": why}))
    section = timings_section(tmp_path)
    assert section is not None
    assert section.paragraphs == [
        "Total 42 s.",
        f"Not run, nothing in this config reads them: vae, ldm ({why}).",
    ]


def test_vae_ceiling_names_the_classes_the_vae_caps():
    per_class = {
        "akiec": {"real_val_fidelity": 0.46, "vae_ceiling_fidelity": 0.0},
        "df": {"real_val_fidelity": 0.82, "vae_ceiling_fidelity": 0.64},
        "vasc": {"real_val_fidelity": 0.875, "vae_ceiling_fidelity": 0.125},
        "bkl": {"class_fidelity": 0.5},  # a run without a VAE ceiling for it
    }
    text = vae_ceiling_paragraph(per_class)
    assert "akiec 46% -> 0%, df 82% -> 64%, vasc 88% -> 12%." in text
    assert "The VAE caps akiec, vasc:" in text
    assert vae_ceiling_paragraph({"bkl": {"class_fidelity": 0.5}}) is None
    fine = vae_ceiling_paragraph({"df": {"real_val_fidelity": 0.8, "vae_ceiling_fidelity": 0.5}})
    assert fine.endswith("No class loses more than half of its rate in the VAE.")


def test_vae_ceiling_prefers_the_independent_judges():
    per_class = {
        "mel": {
            "real_val_fidelity": 0.6,
            "vae_ceiling_fidelity": 0.5,  # the baseline, which gave the VAE its features
            "independent_real_val_fidelity": 0.6,
            "independent_vae_ceiling_fidelity": 0.2,
        }
    }
    text = vae_ceiling_paragraph(per_class)
    assert text.startswith("VAE ceiling: the independent judges' mean recall")
    assert "mel 60% -> 20%" in text and "The VAE caps mel:" in text


def test_fidelity_paragraph_holds_every_sampled_image_to_half():
    per_class = {
        "akiec": {
            "class_fidelity": 0.9,
            "independent_fidelity": 0.82,
            "independent_fidelity_of_accepted": 0.857,
            "near_copies_feature": 1,
            "near_copies_pixel": 0,
        },
        "df": {
            "class_fidelity": 0.3,
            "independent_fidelity": 0.45,
            "independent_fidelity_of_accepted": 0.8,
            "near_copies_feature": 2,
            "near_copies_pixel": 1,
        },
        "vasc": {
            "class_fidelity": 0.0,
            "independent_fidelity": 0.6,
            "independent_fidelity_of_accepted": None,  # the filter kept none
        },
    }
    text = fidelity_paragraph(per_class)
    assert (
        "The independent judges recognise akiec 82% (86%), df 45% (80%), vasc 60% (none kept) "
        "of the sampled images as their class (in brackets: of the images the filter kept)."
    ) in text
    # df passes among the kept images but not among all it sampled: the bar takes the latter.
    assert "Below 50%: df." in text
    assert text.endswith("3 in features, 1 in pixels.")
    # No independent judges: the baseline's own rate, and every class passes.
    only_baseline = fidelity_paragraph({"bcc": {"class_fidelity": 0.76}})
    assert "The baseline recognises bcc 76% of the sampled images as their class. Every" in (
        only_baseline
    )
    assert fidelity_paragraph({"bcc": {"fid": 40.0}}) is None
