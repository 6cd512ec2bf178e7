"""int8 ONNX models via onnxruntime.quantization, chosen by measurement.

Several variants are built from the fp32 model (after `quant_pre_process`, which
static and dynamic quantization of conv nets both need):

    dynamic        weights int8 per channel, activations quantized at run time
                   (ConvInteger / MatMulInteger); needs no calibration data
    qdq            static, QDQ format, uint8 activations + int8 per-channel weights,
                   only Conv / MatMul / Gemm quantized
    qoperator      the same with QLinearConv / QLinearMatMul operators
    qdq_all        static QDQ, uint8 activations, every op onnxruntime can quantize
                   (Add, Mul, pooling, activations too: fewer float <-> int8 hops)
    qoperator_all  the same in QOperator format
    *_pct          percentile calibration (0.01-99.99 %) instead of min/max, stem conv
                   and classifier head kept in float. Measured on a from-scratch
                   efficientnet_b0 (64 px, HAM10000 val): min/max ranges of every op
                   cost 10 points of balanced accuracy, percentile ranges about 1
    qdq_default    onnxruntime's defaults (int8 activations, every op, per-tensor): the
                   reference DESIGN.md measured slower than fp32; x86 int8 kernels want
                   uint8 activations x int8 weights (VNNI u8s8), hence the others

Each variant is timed at batch 1 on this CPU (interleaved, so background load hits
all alike; with one thread, by the thread's CPU time) and scored against fp32 on
validation images. The default choice is the fastest variant whose validation
balanced accuracy is within `max_balanced_acc_drop` of fp32 and which gives fp32's
top class on at least `MIN_TOP1_AGREEMENT` of them. If none is, the variant with the
highest top-1 agreement with fp32 is kept. It is written as
model.int8.onnx and the whole table goes to quantization_report.json; only an
acceptable variant at least `INT8_MIN_SPEEDUP` times as fast as fp32 is
`recommended: "int8"` (predictors and the server load the recommended model),
otherwise the report says "fp32".
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from dermae.deploy.runtime import make_session, run_probs
from dermae.deploy.spec import INPUT_NAME
from dermae.metrics import scalar_metrics

REPORT_FILE = "quantization_report.json"
# int8 costs some accuracy, and a 20-repeat timing flips a smaller lead between runs
# (BENCHMARKS section 40: 1.28 against 1.10 ms in the benchmark, int8 "faster" in export).
INT8_MIN_SPEEDUP = 1.1
# Balanced accuracy alone let through int8 models that change the top class of 11 % of
# images (BENCHMARKS section 41): a few small classes hide such churn. Good variants agree
# 97-99 % (resnet10t, efficientnet_b0, mobilenetv3 at 64 px).
MIN_TOP1_AGREEMENT = 0.95
INT8_FILE = "model.int8.onnx"
COMPUTE_OPS = ["Conv", "MatMul", "Gemm"]


def _static(
    fmt: QuantFormat,
    ops: list[str] | None,
    per_channel: bool = True,
    act: QuantType = QuantType.QUInt8,
    calibration: str = "minmax",
    keep_float: bool = False,
) -> dict[str, Any]:
    return {
        "mode": "static",
        "format": fmt,
        "per_channel": per_channel,
        "activation_type": act,
        "ops": ops,
        "calibration": calibration,
        # Leave the stem conv and the classifier head in float: cheap, and the head's
        # logits decide minority classes.
        "keep_float": "stem+head" if keep_float else None,
    }


PCT = {"calibration": "percentile", "keep_float": True}
VARIANTS: dict[str, dict[str, Any]] = {
    "dynamic": {"mode": "dynamic", "per_channel": True},
    "qdq": _static(QuantFormat.QDQ, COMPUTE_OPS),
    "qoperator": _static(QuantFormat.QOperator, COMPUTE_OPS),
    "qdq_all": _static(QuantFormat.QDQ, None),
    "qoperator_all": _static(QuantFormat.QOperator, None),
    "qoperator_pct": _static(QuantFormat.QOperator, COMPUTE_OPS, **PCT),
    "qdq_all_pct": _static(QuantFormat.QDQ, None, **PCT),
    "qoperator_all_pct": _static(QuantFormat.QOperator, None, **PCT),
    "qdq_default": _static(QuantFormat.QDQ, None, per_channel=False, act=QuantType.QInt8),
}
DEFAULT_VARIANTS = (
    "dynamic",
    "qoperator",
    "qoperator_all",
    "qoperator_pct",
    "qdq_all_pct",
    "qoperator_all_pct",
)
CALIBRATION_METHODS = {
    "minmax": (CalibrationMethod.MinMax, None),
    # Ranges from the 0.01 / 99.99 percentiles: outliers no longer stretch the scale.
    "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99}),
}


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds float [N, 3, S, S] calibration images (train or val split, never test)."""

    def __init__(self, images: np.ndarray, batch_size: int = 16):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.batch_size = batch_size
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            return None
        batch = self.images[self._next : self._next + self.batch_size]
        self._next += self.batch_size
        return {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._next = 0


def preprocess_for_quantization(fp32_path: Path, out_path: Path) -> Path:
    """Shape inference + graph optimisation; dynamic int8 of conv nets fails without it."""
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return out_path


def float_nodes(model_path: Path, stem_and_head: bool) -> list[str]:
    """Nodes kept in float: always the output Softmax (uint8 probabilities would come in
    steps of 1/256: ties in argmax, a coarse malignant risk); optionally the first Conv
    and the last Gemm / MatMul (stem and classifier head)."""
    nodes = onnx.load(str(model_path)).graph.node
    keep = [n.name for n in nodes if n.op_type == "Softmax"]
    if stem_and_head:
        keep += [n.name for n in nodes if n.op_type == "Conv"][:1]
        keep += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")][-1:]
    return keep


def build_variant(
    prepared_path: Path,
    out_path: Path,
    variant: str,
    calibration_images: np.ndarray | None,
    calibration_cache_dir: Path | None = None,
) -> Path:
    """One int8 variant. Static variants with the same calibration method share tensor
    ranges through a JSON cache in `calibration_cache_dir` (calibrating with every op
    covers all tensors, so those variants run first)."""
    spec = VARIANTS[variant]
    if spec["mode"] == "dynamic":
        quantize_dynamic(
            str(prepared_path),
            str(out_path),
            per_channel=spec["per_channel"],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_nodes(prepared_path, False),
        )
        return out_path
    method, extra = CALIBRATION_METHODS[spec["calibration"]]
    cache = None
    if calibration_cache_dir is not None:
        cache = calibration_cache_dir / f"calibration-{spec['calibration']}.json"
    cached = cache is not None and cache.exists()
    if not cached and (calibration_images is None or len(calibration_images) == 0):
        raise ValueError(f"int8 variant '{variant}' needs calibration images (train or val split)")
    quantize_static(
        str(prepared_path),
        str(out_path),
        None if cached else ImageCalibrationReader(calibration_images),
        quant_format=spec["format"],
        op_types_to_quantize=spec["ops"],
        per_channel=spec["per_channel"],
        activation_type=spec["activation_type"],
        weight_type=QuantType.QInt8,
        nodes_to_exclude=float_nodes(prepared_path, bool(spec["keep_float"])),
        calibrate_method=method,
        calibration_cache_path=cache,
        extra_options=extra,
    )
    return out_path


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, malignant_index: Sequence[int]
) -> dict[str, float | None]:
    """accuracy, balanced accuracy and malignant-vs-benign AUROC, as the evaluate stage has them."""
    scores = scalar_metrics(np.asarray(labels), np.asarray(probs), list(malignant_index))
    return {k: scores[k] for k in ("accuracy", "balanced_accuracy", "malignant_auroc")}


def latency_stats(wall_ms: list[float], cpu_ms: list[float]) -> dict[str, float]:
    return {
        "median_ms": float(np.median(wall_ms)),
        "p95_ms": float(np.percentile(wall_ms, 95)),
        "min_ms": float(np.min(wall_ms)),
        "cpu_median_ms": float(np.median(cpu_ms)),
        "repeats": len(wall_ms),
    }


def timing_key(threads: int | None) -> str:
    """The statistic to compare runners by.

    With one thread, the thread's own CPU time is the run's cost even when other
    processes share the cores (wall time then includes waiting for a core); with
    several threads only wall time covers the work.
    """
    return "cpu_median_ms" if threads == 1 else "median_ms"


def time_sessions(
    paths: dict[str, Path],
    image_size: int,
    batch_size: int = 1,
    repeats: int = 30,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Latency (wall and CPU ms) per model; runs are interleaved across models each round."""
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, 3, image_size, image_size), dtype=np.float32)
    sessions = {name: make_session(path, threads) for name, path in paths.items()}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, {INPUT_NAME: x})
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            start, start_cpu = time.perf_counter(), time.thread_time()
            sessions[name].run(None, {INPUT_NAME: x})
            cpu[name].append((time.thread_time() - start_cpu) * 1000)
            wall[name].append((time.perf_counter() - start) * 1000)
    return {
        name: {**latency_stats(wall[name], cpu[name]), "batch_size": batch_size} for name in names
    }


def _op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def score_models(
    paths: dict[str, Path],
    images: np.ndarray,
    labels: np.ndarray | None,
    malignant_index: Sequence[int],
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per model: agreement with the first model (fp32) and, with labels, metrics + deltas."""
    scores: dict[str, dict[str, Any]] = {}
    reference = None
    for name, path in paths.items():
        probs = run_probs(make_session(path, threads), images)
        if reference is None:
            reference = probs
        entry: dict[str, Any] = {
            "n_images": int(len(images)),
            "max_abs_prob_diff_vs_fp32": float(np.abs(probs - reference).max()),
            "top1_agreement_vs_fp32": float((probs.argmax(1) == reference.argmax(1)).mean()),
        }
        if labels is not None:
            entry["metrics"] = classification_metrics(probs, labels, malignant_index)
        scores[name] = entry
    base = next(iter(scores.values())).get("metrics")
    for entry in scores.values():
        if base and "metrics" in entry:
            entry["delta_vs_fp32"] = {
                k: None if v is None or base[k] is None else v - base[k]
                for k, v in entry["metrics"].items()
            }
    return scores


def quantize_model(
    fp32_path: str | Path,
    out_dir: str | Path,
    calibration_images: np.ndarray | None,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    malignant_index: Sequence[int] = (),
    variants: Sequence[str] = DEFAULT_VARIANTS,
    choose: str = "auto",
    max_balanced_acc_drop: float = 0.005,
    min_top1_agreement: float = MIN_TOP1_AGREEMENT,
    threads: int | None = None,
    timing_repeats: int = 30,
) -> dict[str, Any]:
    """Build, score and time int8 variants; write model.int8.onnx + quantization_report.json.

    Splits keep their roles: `calibration_images` (train or val) set activation ranges;
    `val_*` decide which variant is acceptable (balanced accuracy within
    `max_balanced_acc_drop` of fp32 and top-1 agreement with fp32 >= `min_top1_agreement`;
    without labels, the agreement alone, on the calibration images); `test_*` are only
    measured and reported, never used to choose.
    `choose` = "auto" (fastest acceptable variant) or a variant name.
    """
    fp32_path = Path(fp32_path)
    out_dir = Path(out_dir)
    unknown = [v for v in [*variants, choose] if v not in VARIANTS and v != "auto"]
    if unknown:
        raise ValueError(f"unknown int8 variant '{unknown[0]}'; choose from {list(VARIANTS)}")
    if choose != "auto" and choose not in variants:
        variants = [*variants, choose]
    dims = onnx.load(str(fp32_path)).graph.input[0].type.tensor_type.shape.dim
    image_size = int(dims[-1].dim_value)
    report: dict[str, Any] = {
        "fp32_model": fp32_path.name,
        "n_calibration_images": 0 if calibration_images is None else int(len(calibration_images)),
        "selection": {
            "rule": "fastest at batch 1 among acceptable variants",
            "timing": timing_key(threads),
            "acceptable": acceptance_rule(
                max_balanced_acc_drop, min_top1_agreement, labelled=val_labels is not None
            ),
        },
        "threads": threads,
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="dermae-int8-") as tmp:
        tmp = Path(tmp)
        prepared = preprocess_for_quantization(fp32_path, tmp / "prepared.onnx")
        paths = {"fp32": fp32_path}
        # Variants quantizing every op first: their calibration covers all tensors.
        order = sorted(variants, key=lambda v: VARIANTS[v].get("ops", []) is not None)
        for name in order:
            try:
                paths[name] = build_variant(
                    prepared, tmp / f"{name}.onnx", name, calibration_images, tmp
                )
                make_session(paths[name], threads)  # fails here if ORT lacks a kernel
            except Exception as err:  # a variant that cannot be built is reported, not fatal
                paths.pop(name, None)
                report["variants"][name] = {"error": f"{type(err).__name__}: {err}"}
        for name, path in paths.items():
            report["variants"][name] = {"size_bytes": path.stat().st_size, "ops": _op_counts(path)}
            if name in VARIANTS:
                report["variants"][name]["settings"] = _describe(VARIANTS[name])
        select_images = val_images if val_images is not None else calibration_images
        select_labels = val_labels if val_images is not None else None
        for split, images, labels in (
            ("val", select_images, select_labels),
            ("test", test_images, test_labels),
        ):
            if images is None or len(images) == 0:
                continue
            for name, entry in score_models(
                paths, images, labels, malignant_index, threads
            ).items():
                report["variants"][name][split] = entry
        timings = time_sessions(paths, image_size, repeats=timing_repeats, threads=threads)
        for name, timing in timings.items():
            report["variants"][name]["latency_b1"] = timing
        chosen = _choose(report, variants, choose, max_balanced_acc_drop, min_top1_agreement)
        report["chosen"] = chosen
        report["recommended"] = "fp32"
        if chosen is not None:
            shutil.copyfile(paths[chosen], out_dir / INT8_FILE)
            key = report["selection"]["timing"]
            fp32_ms = report["variants"]["fp32"]["latency_b1"][key]
            int8_ms = report["variants"][chosen]["latency_b1"][key]
            report["int8_file"] = INT8_FILE
            report["speedup_vs_fp32_b1"] = fp32_ms / int8_ms
            report["recommended"] = recommend(
                fp32_ms, int8_ms, bool(report["variants"][chosen]["accepted"])
            )
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def recommend(fp32_ms: float, int8_ms: float, accepted: bool) -> str:
    """int8 when the chosen variant is acceptable and clearly faster, else fp32."""
    return "int8" if accepted and fp32_ms >= INT8_MIN_SPEEDUP * int8_ms else "fp32"


def _describe(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.name if hasattr(v, "name") else v) for k, v in spec.items()}


def acceptance_rule(max_drop: float, min_agreement: float, labelled: bool) -> str:
    """The acceptance rule in words, as the report and the benchmark tables state it."""
    agreement = f"top-1 agreement with fp32 >= {min_agreement:g}"
    if labelled:
        return f"validation balanced accuracy drop <= {max_drop:g} and {agreement}"
    return f"{agreement} on calibration images"


def acceptable(entry: dict[str, Any], max_drop: float, min_agreement: float) -> bool:
    """Whether a variant's `val` scores (from `score_models`) meet the acceptance rule."""
    val = entry.get("val", {})
    agrees = val.get("top1_agreement_vs_fp32", 1.0) >= min_agreement - 1e-12
    if "delta_vs_fp32" in val:
        return agrees and -val["delta_vs_fp32"]["balanced_accuracy"] <= max_drop + 1e-12
    return agrees


def _choose(
    report: dict[str, Any],
    variants: Sequence[str],
    choose: str,
    max_drop: float,
    min_agreement: float,
) -> str | None:
    built = [v for v in variants if "latency_b1" in report["variants"].get(v, {})]
    for v in built:
        report["variants"][v]["accepted"] = acceptable(
            report["variants"][v], max_drop, min_agreement
        )
    if choose != "auto":
        return choose if choose in built else None
    if not built:
        return None
    accepted = [v for v in built if report["variants"][v]["accepted"]]
    if not accepted:
        # Nothing meets the tolerance: keep the most faithful variant (recommended stays fp32).
        return max(
            built,
            key=lambda v: report["variants"][v].get("val", {}).get("top1_agreement_vs_fp32", 0.0),
        )
    key = report["selection"]["timing"]
    return min(accepted, key=lambda v: report["variants"][v]["latency_b1"][key])


__all__ = [
    "DEFAULT_VARIANTS",
    "INT8_FILE",
    "INT8_MIN_SPEEDUP",
    "MIN_TOP1_AGREEMENT",
    "REPORT_FILE",
    "VARIANTS",
    "ImageCalibrationReader",
    "acceptable",
    "acceptance_rule",
    "build_variant",
    "classification_metrics",
    "float_nodes",
    "preprocess_for_quantization",
    "quantize_model",
    "recommend",
    "score_models",
    "time_sessions",
    "timing_key",
]
