"""`dermae predict` on bad inputs: documented exit codes, the named file, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dermae.cli import build_parser
from dermae.deploy.predictor import EXIT_CODES, Predictor
from tests.helpers.tiny_export import image_bytes, tiny_export


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("predict"))


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "lesion.png"
    path.write_bytes(image_bytes(60, 45))
    return path


def test_every_input_failed_exits_2_and_names_the_file(cli, export_dir, tmp_path):
    missing = tmp_path / "nope.jpg"
    result = cli("predict", missing, "--model", export_dir)
    assert result.code == 2
    assert "0 predicted, 1 failed" in result.out
    assert f"{missing}: file not found" in result.err
    assert "1 of 1 inputs failed" in result.err


def test_some_inputs_failed_exits_1_and_the_rest_are_predicted(cli, export_dir, good, tmp_path):
    result = cli("predict", good, tmp_path / "gone.png", "--model", export_dir, "--format", "json")
    assert result.code == 1
    rows = json.loads(result.out)
    assert [r["ok"] for r in rows] == [True, False]
    assert rows[1]["error_code"] == "not_found"
    assert "gone.png" in result.err


def test_all_predicted_exits_0(cli, export_dir, good):
    result = cli("predict", good, "--model", export_dir)
    assert result.code == 0
    assert "1 predicted, 0 failed" in result.out
    assert result.err == ""


@pytest.mark.parametrize("text", ["", "path\n", "\ufeffpath\n"])
def test_csv_without_rows_exits_2_and_names_it(cli, export_dir, tmp_path, text):
    listing = tmp_path / "list.csv"
    listing.write_text(text, encoding="utf-8")
    result = cli("predict", listing, "--model", export_dir)
    assert result.code == 2
    assert result.error_lines == [
        f"dermae: error: no images to predict in {listing}: the CSV has no rows or the folder "
        "no images (.bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)"
    ]


def test_csv_with_a_byte_order_mark_reads_its_header(cli, export_dir, good, tmp_path):
    listing = tmp_path / "excel.csv"
    listing.write_text(f"label,path\nnv,{good.name}\n", encoding="utf-8-sig")  # as Excel saves
    assert listing.read_bytes().startswith(b"\xef\xbb\xbf")
    result = cli("predict", listing, "--model", export_dir, "--format", "json")
    assert result.code == 0
    assert [r["file"] for r in json.loads(result.out)] == [str(good)]


def test_a_1x1_image_is_refused_by_name(cli, export_dir, tmp_path):
    dot = tmp_path / "dot.png"
    dot.write_bytes(image_bytes(1, 1))
    result = cli("predict", dot, "--model", export_dir, "--format", "json")
    assert result.code == 2
    (row,) = json.loads(result.out)
    assert row["ok"] is False and row["error_code"] == "too_small"
    assert row["error"] == (
        f"{dot}: 1x1 pixels is too small to classify; send an image at least 16x16 pixels "
        "(a photo of the lesion, not a thumbnail)"
    )


def test_the_minimum_side_is_16_pixels(export_dir):
    predictor = Predictor(export_dir, threads=1)
    assert predictor.predict_image(image_bytes(16, 40), "ok.png")["ok"] is True
    with pytest.raises(ValueError, match="40x15 pixels is too small"):
        predictor.predict_image(image_bytes(40, 15), "thin.png")


def test_help_documents_the_exit_codes():
    parser = build_parser()
    predict = parser._subparsers._group_actions[0].choices["predict"]  # noqa: SLF001
    text = " ".join(predict.format_help().split())
    assert "exit status: 0 every input predicted; 1 some inputs failed" in text
    assert "2 nothing predicted" in text
    assert sorted(EXIT_CODES) == [0, 1, 2]
