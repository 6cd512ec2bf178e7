"""Export a classifier checkpoint to a self-contained ONNX folder.

    model.onnx               float32 [N, 3, S, S] RGB in [0, 1] -> probs [N, C] (softmax and
                             mean/std normalisation inside the graph); dynamic batch axis
    model.int8.onnx          chosen int8 variant (see quantize.py), if int8=True
    preprocess.json          resize rule, input convention, classes, malignant classes, threshold
    export_report.json       parity vs PyTorch, dynamic-batch check, versions, file hashes
    quantization_report.json int8 variants: latency, accuracy change vs fp32
    MODEL_CARD.md / model_card.json

Nothing in the folder needs dermae's training code: onnxruntime + Pillow + numpy
(see predictor.py) are enough.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dermae.classify.model import Classifier, load_classifier
from dermae.deploy.card import build_card, write_card
from dermae.deploy.images import as_model_input
from dermae.deploy.quantize import DEFAULT_VARIANTS, MIN_TOP1_AGREEMENT, quantize_model
from dermae.deploy.runtime import make_session, run_probs
from dermae.deploy.spec import (
    INPUT_NAME,
    OUTPUT_NAME,
    spec_from_config,
    threshold_from_config,
    write_spec,
)
from dermae.engine.checkpoint import atomic_dir, commit_dir, load_config_json
from dermae.layout import RunLayout
from dermae.metrics import choose_threshold, threshold_key
from dermae.risk import malignant_risk

MODEL_FILE = "model.onnx"
REPORT_FILE = "export_report.json"


class ProbabilityModel(nn.Module):
    """Classifier + softmax: the graph that is exported."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(images), dim=-1)


def torch_probs(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """PyTorch reference probabilities for float [N, 3, S, S] images."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(model(torch.from_numpy(images[i : i + batch_size])).float().numpy())
    return np.concatenate(out)


def write_onnx(model: ProbabilityModel, path: Path, image_size: int, opset: int = 17) -> Path:
    """torch.onnx.export with a dynamic batch axis; validated with onnx.checker."""
    dummy = torch.rand(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript
        # (not a dependency); for these static CNN/ViT graphs both give the same graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_onnx(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    opset: int = 17,
    calibration_images: Any = None,
    int8: bool = True,
    parity_images: Any = None,
    val_images: Any = None,
    val_labels: Any = None,
    test_images: Any = None,
    test_labels: Any = None,
    metrics: str | Path | dict[str, Any] | None = None,
    int8_variant: str = "auto",
    int8_variants: tuple[str, ...] = DEFAULT_VARIANTS,
    threshold_specificity: float = 0.9,
    max_calibration_images: int = 256,
    parity_count: int = 32,
    max_balanced_acc_drop: float = 0.005,
    min_top1_agreement: float = MIN_TOP1_AGREEMENT,
    threads: int | None = None,
    timing_repeats: int = 30,
) -> Path:
    """Export `checkpoint_dir` (a classifier checkpoint) to `out_dir`; returns out_dir.

    Images are float [N, 3, S, S] in [0, 1] (numpy or torch) or uint8 [N, S, S, 3]:
    `calibration_images` from the train or validation split (int8 ranges);
    `val_*` choose a threshold when the checkpoint has none and judge int8 variants;
    `test_*` are only measured (int8 change vs fp32), never used to choose anything.
    `parity_images` default to the first calibration / validation / test images, else
    seeded random images. `metrics` is a metrics.json (path or dict) for the model card.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    classifier, config = load_classifier(checkpoint_dir)
    size = int(config["image_size"])
    calibration = None if calibration_images is None else as_model_input(calibration_images)
    val = None if val_images is None else as_model_input(val_images)
    test = None if test_images is None else as_model_input(test_images)
    val_labels = None if val_labels is None else np.asarray(val_labels)
    test_labels = None if test_labels is None else np.asarray(test_labels)
    for name, images in (("calibration", calibration), ("validation", val), ("test", test)):
        if images is not None and images.shape[-1] != size:
            raise ValueError(
                f"{name} images are {images.shape[-1]} px but {checkpoint_dir} expects {size} px"
            )
    if calibration is not None and len(calibration) > max_calibration_images:
        pick = np.random.default_rng(0).choice(len(calibration), max_calibration_images, False)
        calibration = calibration[np.sort(pick)]

    model = ProbabilityModel(classifier).eval()
    threshold = threshold_from_config(config)
    if config.get("threshold") is None and val is not None and val_labels is not None:
        # The checkpoint holds no threshold: choose it on validation, never on test.
        spec0 = spec_from_config(config)
        risk = malignant_risk(torch_probs(model, val), spec0["malignant_index"])
        is_malignant = np.isin(val_labels, spec0["malignant_index"]).astype(int)
        value = choose_threshold(is_malignant, risk, threshold_specificity)
        threshold = {
            "malignant_risk": value,
            "specificity": threshold_specificity,
            "source": "validation (chosen at export)",
            "operating_points": {threshold_key(threshold_specificity): value},
        }
    spec = spec_from_config(config, threshold)

    tmp = atomic_dir(out_dir)
    onnx_path = write_onnx(model, tmp / MODEL_FILE, size, opset)

    parity = parity_images
    if parity is None:
        parity = next((x for x in (calibration, val, test) if x is not None), None)
    parity_source = "given images" if parity is not None else "seeded uniform random images"
    if parity is None:
        parity = np.random.default_rng(0).random((8, 3, size, size), dtype=np.float32)
    parity = as_model_input(parity)[:parity_count]
    session = make_session(onnx_path, threads)
    reference = torch_probs(model, parity)
    onnx_batch = run_probs(session, parity, batch_size=len(parity))
    onnx_single = np.concatenate(
        [run_probs(session, parity[i : i + 1]) for i in range(len(parity))]
    )

    report: dict[str, Any] = {
        "checkpoint": str(checkpoint_dir.resolve()),
        "arch": config["arch"],
        "parameters": int(sum(p.numel() for p in classifier.parameters())),
        "opset": opset,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        "parity": {
            "images": parity_source,
            "n_images": int(len(parity)),
            "max_abs_diff": float(np.abs(onnx_batch - reference).max()),
            "top1_agreement": float((onnx_batch.argmax(1) == reference.argmax(1)).mean()),
        },
        "dynamic_batch": {
            "batch_sizes": [1, int(len(parity))],
            "max_abs_diff_batch1_vs_batchN": float(np.abs(onnx_batch - onnx_single).max()),
        },
        "threshold": threshold,
    }

    quant_report = None
    if int8:
        quant_report = quantize_model(
            onnx_path,
            tmp,
            calibration_images=calibration if calibration is not None else val,
            val_images=val,
            val_labels=val_labels,
            test_images=test,
            test_labels=test_labels,
            malignant_index=spec["malignant_index"],
            variants=int8_variants,
            choose=int8_variant,
            max_balanced_acc_drop=max_balanced_acc_drop,
            min_top1_agreement=min_top1_agreement,
            threads=threads,
            timing_repeats=timing_repeats,
        )
        spec["recommended_model"] = (
            "model.int8.onnx" if quant_report["recommended"] == "int8" else MODEL_FILE
        )
    else:
        spec["recommended_model"] = MODEL_FILE

    write_spec(tmp, spec)
    report["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tmp.glob("*.onnx"))
    }
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))

    metrics_dict, metrics_source = None, None
    if isinstance(metrics, str | Path):
        metrics_source = Path(metrics).name
        metrics_dict = json.loads(Path(metrics).read_text())
    elif isinstance(metrics, dict):
        metrics_dict, metrics_source = metrics, "metrics supplied at export"
    write_card(tmp, build_card(spec, report, quant_report, metrics_dict, metrics_source))
    commit_dir(tmp, out_dir)
    return out_dir


def export_run(
    cfg: Any,
    checkpoint_dir: str | Path,
    out_dir: str | Path | None = None,
    metrics: str | Path | dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Pipeline entry: export with the run's prepared data and `cfg.export` (ExportConfig).

    Calibration images come from `cfg.export.calibration_split` (real images only:
    deployment sees real photos), the validation split judges int8 variants (and sets
    the threshold when the checkpoint has none), the test split is only reported.
    Writes to `<run_dir>/export` unless `out_dir` is given.
    """
    from dermae.data.prepared import load_prepared

    ecfg = cfg.export
    if ecfg.calibration_split not in ("train", "val"):
        raise ValueError(
            f"export.calibration_split must be 'train' or 'val', not '{ecfg.calibration_split}'"
        )
    run_dir = Path(run_dir or cfg.run_dir)
    data = load_prepared(run_dir, with_synthetic=False)
    model_size = int(load_config_json(checkpoint_dir)["image_size"])
    if model_size != data.image_size:  # a student at distill.image_size
        data = data.at_size(model_size)

    def split(name: str) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        rows = data.rows(name)
        if len(rows) == 0:
            return None, None
        pixels = data.arrays["real"][np.sort(rows["cache_index"].to_numpy())]
        labels = rows.sort_values("cache_index")["label"].to_numpy()
        return pixels, labels

    calib, _ = split(ecfg.calibration_split)
    if calib is not None and len(calib) > ecfg.calibration_images:
        pick = np.random.default_rng(cfg.seed).choice(len(calib), ecfg.calibration_images, False)
        calib = calib[np.sort(pick)]
    val_x, val_y = split("val")
    test_x, test_y = split("test")
    return export_onnx(
        checkpoint_dir,
        out_dir or RunLayout(run_dir).export,
        opset=ecfg.opset,
        calibration_images=calib,
        int8=ecfg.int8,
        val_images=val_x,
        val_labels=val_y,
        test_images=test_x,
        test_labels=test_y,
        metrics=metrics,
        int8_variant=ecfg.int8_variant,
        int8_variants=tuple(ecfg.int8_variants) or DEFAULT_VARIANTS,
        threshold_specificity=ecfg.threshold_specificity,
        max_calibration_images=ecfg.calibration_images,
        parity_count=ecfg.parity_images,
        max_balanced_acc_drop=ecfg.max_balanced_acc_drop,
        min_top1_agreement=ecfg.min_top1_agreement,
        threads=ecfg.timing_threads,
    )


__all__ = [
    "MODEL_FILE",
    "REPORT_FILE",
    "ProbabilityModel",
    "export_onnx",
    "export_run",
    "torch_probs",
    "write_onnx",
]
