"""Predictor: ONNX folder and PyTorch checkpoint agree; bad files are reported per file."""

import csv
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.data.classes import HAM10000_CLASSES
from dermae.deploy.export import export_onnx
from dermae.deploy.images import load_image
from dermae.deploy.predictor import Predictor, collect_inputs, run_predict

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: avoid torch's spin-waiting thread pool
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    config = classifier_config(
        "test_efficientnet", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], SIZE
    )
    ckpt = save_classifier(
        root / "ckpt", build_classifier(config), {"threshold": {"malignant_risk": 0.4}}
    )
    export = export_onnx(ckpt, root / "export", int8=False, threads=1)
    return ckpt, export


def png_header_only(width, height):
    """A valid PNG header claiming width x height pixels with almost no data."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0"))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def write_image(path, seed, size=(60, 45), fmt=None):
    rng = np.random.default_rng(seed)
    # Smooth colour gradients + noise: a more image-like input than pure noise.
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return path


@pytest.fixture()
def image_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    good = [
        write_image(tmp_path / "a.jpg", 1),
        write_image(tmp_path / "b.png", 2, size=(40, 80)),
        write_image(tmp_path / "sub" / "c.jpg", 3),
    ]
    (tmp_path / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
    (tmp_path / "notes.jpg").write_bytes(b"not an image at all")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 60)).save(jpeg, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    (tmp_path / "readme.txt").write_text("ignored: not an image suffix")
    return tmp_path, good


def test_torch_and_onnx_give_the_same_probabilities(model_dirs, image_folder):
    ckpt, export = model_dirs
    folder, good = image_folder
    onnx_results = Predictor(export).predict_paths(good)
    torch_results = Predictor(ckpt).predict_paths(good)
    assert Predictor(export).backend == "onnx" and Predictor(ckpt).backend == "torch"
    for a, b in zip(onnx_results, torch_results, strict=True):
        pa = np.array(list(a["probabilities"].values()))
        pb = np.array(list(b["probabilities"].values()))
        assert np.abs(pa - pb).max() < 1e-4
        assert a["prediction"] == b["prediction"]
        assert a["malignant_risk"] == pytest.approx(b["malignant_risk"], abs=1e-4)


def test_result_fields_follow_from_probabilities(model_dirs, image_folder):
    _, export = model_dirs
    _, good = image_folder
    predictor = Predictor(export)
    result = predictor.predict_paths([good[0]])[0]
    probs = predictor.predict_array(load_image(good[0], SIZE)[None])[0]
    assert list(result["probabilities"]) == list(HAM10000_CLASSES)
    np.testing.assert_allclose(list(result["probabilities"].values()), probs, atol=1e-7)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["prediction"] == HAM10000_CLASSES[int(np.argmax(probs))]
    assert result["malignant_risk"] == pytest.approx(probs[[0, 1, 4]].sum(), abs=1e-6)
    assert result["threshold"] == 0.4
    assert result["flagged"] == (result["malignant_risk"] >= 0.4)


def test_bad_files_reported_while_good_ones_predicted(model_dirs, image_folder):
    _, export = model_dirs
    folder, good = image_folder
    predictor = Predictor(export, batch_size=2)  # batches straddle the bad files
    inputs = [folder, folder / "missing.jpg"]
    results = predictor.predict_paths(inputs)
    by_name = {r["file"].split("/")[-1]: r for r in results}
    assert set(by_name) == {
        *("a.jpg", "b.png", "c.jpg"),
        *("bomb.png", "notes.jpg", "truncated.jpg", "missing.jpg"),
    }
    assert by_name["bomb.png"]["error_code"] == "too_many_pixels"
    assert by_name["notes.jpg"]["error_code"] == "not_an_image"
    assert by_name["truncated.jpg"]["error_code"] == "truncated"
    assert by_name["missing.jpg"]["error_code"] == "not_found"
    assert all("notes.jpg" in r["error"] for r in results if r["file"].endswith("notes.jpg"))
    for name in ("a.jpg", "b.png", "c.jpg"):
        assert by_name[name]["ok"] is True
        single = predictor.predict_image(by_name[name]["file"])
        assert by_name[name]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)


def test_collect_inputs_reads_csv_relative_to_its_folder(tmp_path):
    write_image(tmp_path / "x.jpg", 4)
    (tmp_path / "list.csv").write_text("image_id,file\n1,x.jpg\n2,gone.jpg\n")
    (tmp_path / "bare.csv").write_text("x.jpg\n")
    assert collect_inputs(tmp_path / "list.csv") == [tmp_path / "x.jpg", tmp_path / "gone.jpg"]
    assert collect_inputs(tmp_path / "bare.csv") == [tmp_path / "x.jpg"]


def test_run_predict_writes_json_csv_and_table(model_dirs, image_folder, tmp_path, capsys):
    _, export = model_dirs
    folder, good = image_folder
    inputs = [*good, folder / "notes.jpg"]
    results = run_predict(inputs, export, out=tmp_path / "r.json", fmt="json")
    assert json.loads((tmp_path / "r.json").read_text()) == results
    run_predict(inputs, export, out=tmp_path / "r.csv", fmt="csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["ok"] for r in rows] == ["True", "True", "True", "False"]
    total = sum(float(rows[0][f"p_{c}"]) for c in HAM10000_CLASSES)
    assert total == pytest.approx(1.0, abs=1e-5)
    assert float(rows[0]["malignant_risk"]) == pytest.approx(results[0]["malignant_risk"])
    assert "not a readable image" in rows[3]["error"]
    run_predict(inputs, export, fmt="table")
    table = capsys.readouterr().out
    assert "3 predicted, 1 failed" in table and "ERROR" in table
    assert results[0]["prediction"] in table.splitlines()[1]
    with pytest.raises(ValueError, match="format"):
        run_predict(inputs, export, fmt="xml")
