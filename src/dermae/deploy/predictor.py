"""Predict skin-lesion classes for image files with an exported ONNX folder or a checkpoint.

    predictor = Predictor("runs/demo/export")          # ONNX (onnxruntime), no torch needed
    predictor = Predictor("runs/demo/student")         # PyTorch classifier checkpoint
    results = predictor.predict_paths(["a.jpg", "folder/", "list.csv"])

Both give the same probabilities (within 1e-4). Files that cannot be used (missing,
not an image, truncated, decompression bomb, too small) get a result with ok=False and an
error message; the other files are still predicted. `dermae predict` exits with
`exit_code(results)`: 0 all predicted, 1 some failed, 2 none predicted (see EXIT_CODES).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image

from dermae.deploy.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    MIN_IMAGE_SIDE,
    ImageError,
    check_min_side,
    load_image,
    preprocess_image,
)
from dermae.deploy.spec import apply_temperature, load_spec
from dermae.risk import malignant_risk

CSV_PATH_COLUMNS = ("path", "file", "filepath", "image_path", "image")
FORMATS = ("table", "json", "csv")
EXIT_CODES = {
    0: "every input was predicted",
    1: "some inputs failed (listed with their error); the others were predicted",
    2: "nothing was predicted: no inputs found, every input failed, or a usage error",
}


class Predictor:
    """Loads an export folder (backend "onnx") or a classifier checkpoint (backend "torch")."""

    def __init__(
        self,
        model_dir: str | Path,
        backend: str = "auto",
        model_file: str | None = None,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int = 32,
        min_side: int = MIN_IMAGE_SIDE,
    ):
        self.model_dir = Path(model_dir)
        self.spec = load_spec(self.model_dir)
        if backend == "auto":
            backend = "onnx" if any(self.model_dir.glob("*.onnx")) else "torch"
        if backend not in ("onnx", "torch"):
            raise ValueError(f"backend must be 'auto', 'onnx' or 'torch', got '{backend}'")
        self.backend = backend
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.batch_size = batch_size
        if backend == "onnx":
            from dermae.deploy.runtime import make_session

            self.model_file = model_file or self.spec.get("recommended_model", "model.onnx")
            path = self.model_dir / self.model_file
            if not path.exists():
                raise FileNotFoundError(f"{path} not found: export the model first (dermae export)")
            self._session = make_session(path, threads)
        else:
            import torch

            from dermae.classify.model import load_classifier
            from dermae.deploy.export import ProbabilityModel

            if threads:
                torch.set_num_threads(threads)
            self.model_file = "model.safetensors"
            self._model = ProbabilityModel(load_classifier(self.model_dir)[0]).eval()

    # ------------------------------------------------------------------ properties
    @property
    def class_names(self) -> list[str]:
        return list(self.spec["class_names"])

    @property
    def malignant_index(self) -> list[int]:
        return list(self.spec["malignant_index"])

    @property
    def threshold(self) -> float:
        return float(self.spec["threshold"]["malignant_risk"])

    @property
    def image_size(self) -> int:
        return int(self.spec["image_size"])

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model_file": self.model_file,
            "arch": self.spec.get("arch"),
            "image_size": self.image_size,
            "class_names": self.class_names,
            "malignant_classes": list(self.spec["malignant_classes"]),
            "threshold": self.spec["threshold"],
        }

    # ------------------------------------------------------------------ inference
    def predict_array(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, 3, S, S] in [0, 1] -> probabilities [N, C]."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"expected images [N, 3, {self.image_size}, {self.image_size}], got {images.shape}"
            )
        if self.backend == "onnx":
            from dermae.deploy.runtime import run_probs

            probs = run_probs(self._session, images, self.batch_size)
        else:
            from dermae.deploy.export import torch_probs

            probs = torch_probs(self._model, images, self.batch_size)
        # A site calibration (`dermae calibrate --temperature`) may rescale the probabilities;
        # its threshold was chosen on the rescaled risk.
        return apply_temperature(probs, self.spec.get("temperature"))

    def load(self, source: str | Path | bytes, name: str | None = None) -> np.ndarray:
        """A file or bytes -> float32 [3, S, S] in [0, 1]; raises ImageError if unusable."""
        return load_image(source, self.image_size, self.max_pixels, name, self.min_side)

    def result(self, name: str, probs: np.ndarray) -> dict[str, Any]:
        risk = float(malignant_risk(probs[None], self.malignant_index)[0])
        top = int(np.argmax(probs))
        return {
            "file": name,
            "ok": True,
            "prediction": self.class_names[top],
            "confidence": float(probs[top]),
            "probabilities": {c: float(p) for c, p in zip(self.class_names, probs, strict=True)},
            "malignant_risk": risk,
            "threshold": self.threshold,
            "flagged": bool(risk >= self.threshold),
            "error": None,
            "error_code": None,
        }

    @staticmethod
    def failure(name: str, error: ImageError) -> dict[str, Any]:
        return {"file": name, "ok": False, "error": str(error), "error_code": error.code}

    def predict_image(self, source: str | Path | bytes | Image.Image, name: str = "image") -> dict:
        """One image (path, bytes or PIL image) -> result dict; raises ImageError if unusable."""
        if isinstance(source, Image.Image):
            check_min_side(source.size, self.min_side, name)
            array = preprocess_image(source, self.image_size)
        else:
            array = self.load(source, name)
        return self.result(name, self.predict_array(array[None])[0])

    def predict_paths(self, inputs: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
        """Files, folders (searched recursively for images) or CSVs of paths -> results, in order."""
        results: list[dict[str, Any] | None] = []
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            if pending:
                probs = self.predict_array(np.stack([x for _, x in pending]))
                for (slot, _), p in zip(pending, probs, strict=True):
                    results[slot] = self.result(results[slot]["file"], p)
                pending.clear()

        for path in collect_inputs(inputs):
            name = str(path)
            try:
                array = self.load(path, name)
            except ImageError as err:
                results.append(self.failure(name, err))
                continue
            results.append({"file": name})
            pending.append((len(results) - 1, array))
            if len(pending) >= self.batch_size:
                flush()
        flush()
        return [r for r in results if r is not None]


# ---------------------------------------------------------------------- inputs


def _paths_from_csv(path: Path) -> list[Path]:
    # utf-8-sig: Excel writes a byte-order mark, which would otherwise hide the header name.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return []
        lowered = [h.strip().lower() for h in header]
        column = next((lowered.index(c) for c in CSV_PATH_COLUMNS if c in lowered), None)
        rows = list(reader)
        if column is None:
            # No known header: the first column holds paths, and so may the header row.
            column = 0
            rows = [header, *rows]
    out = []
    for row in rows:
        if len(row) > column and row[column].strip():
            entry = Path(row[column].strip())
            # Relative paths in a CSV are relative to the CSV's folder.
            out.append(entry if entry.is_absolute() else path.parent / entry)
    return out


def collect_inputs(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, image suffixes only, sorted) and CSV files of paths."""
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif item.suffix.lower() == ".csv" and item.is_file():
            paths += _paths_from_csv(item)
        else:
            paths.append(item)  # a missing file is reported per file, not raised
    return paths


# ---------------------------------------------------------------------- output


def format_table(results: Sequence[dict[str, Any]]) -> str:
    header = ("file", "prediction", "confidence", "malignant_risk", "threshold", "flag")
    rows = []
    for r in results:
        if r["ok"]:
            rows.append(
                (
                    r["file"],
                    r["prediction"],
                    f"{r['confidence']:.3f}",
                    f"{r['malignant_risk']:.3f}",
                    f"{r['threshold']:.3f}",
                    "ABOVE" if r["flagged"] else "below",
                )
            )
        else:
            rows.append((r["file"], "ERROR", "", "", "", r["error"]))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    ok = sum(r["ok"] for r in results)
    lines.append(f"{ok} predicted, {len(results) - ok} failed. Research tool, not a diagnosis.")
    return "\n".join(lines) + "\n"


def write_json(results: Sequence[dict[str, Any]], stream: TextIO) -> None:
    json.dump(list(results), stream, indent=2)
    stream.write("\n")


def write_csv(
    results: Sequence[dict[str, Any]], stream: TextIO, class_names: Sequence[str]
) -> None:
    columns = ["file", "ok", "prediction", "confidence", "malignant_risk", "threshold", "flagged"]
    writer = csv.writer(stream)
    writer.writerow([*columns, *[f"p_{c}" for c in class_names], "error"])
    for r in results:
        probs = r.get("probabilities") or {}
        writer.writerow(
            [r.get(c, "") if r.get(c) is not None else "" for c in columns]
            + [probs.get(c, "") for c in class_names]
            + [r.get("error") or ""]
        )


def run_predict(
    inputs: str | Path | Sequence[str | Path],
    model_dir: str | Path,
    out: str | Path | None = None,
    fmt: str = "table",
    backend: str = "auto",
    model_file: str | None = None,
) -> list[dict[str, Any]]:
    """CLI entry: predict, then print (or write to `out`) a table, JSON or CSV."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got '{fmt}'")
    predictor = Predictor(model_dir, backend=backend, model_file=model_file)
    results = predictor.predict_paths(inputs)
    if not results:
        named = ", ".join(str(i) for i in ([inputs] if isinstance(inputs, str | Path) else inputs))
        raise ValueError(
            f"no images to predict in {named}: the CSV has no rows or the folder no images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    buffer = io.StringIO()
    if fmt == "table":
        buffer.write(format_table(results))
    elif fmt == "json":
        write_json(results, buffer)
    else:
        write_csv(results, buffer, predictor.class_names)
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(buffer.getvalue())
    return results


def exit_code(results: Sequence[dict[str, Any]]) -> int:
    """The `dermae predict` exit status for these results (EXIT_CODES)."""
    failed = sum(not r["ok"] for r in results)
    if not results or failed == len(results):
        return 2
    return 1 if failed else 0


def predict_command(
    inputs: Sequence[str | Path], model_dir: str | Path, out: str | Path | None, fmt: str
) -> int:
    """`dermae predict`: run, write the results, then say on stderr what failed; exit code."""
    results = run_predict(inputs, model_dir, out=out, fmt=fmt)
    failed = [r for r in results if not r["ok"]]
    if failed:
        first = failed[0]["error"]
        sys.stderr.write(
            f"dermae: {len(failed)} of {len(results)} inputs failed (first: {first})\n"
        )
    return exit_code(results)


__all__ = [
    "Predictor",
    "EXIT_CODES",
    "collect_inputs",
    "exit_code",
    "format_table",
    "predict_command",
    "run_predict",
    "write_csv",
    "write_json",
]
