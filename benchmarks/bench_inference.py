"""CPU inference benchmark: timm eager vs ONNX fp32 vs ONNX int8.

For each model (classifier checkpoints given with --checkpoint, otherwise
efficientnet_b0 / mobilenetv3_large_100 / vit_tiny_patch16_224 built from scratch at
64 and 224 px) it measures, on this CPU:

    latency at batch 1 (median, p95), throughput at batch 32,
    size on disk, FLOPs (torch FlopCounterMode) and the latency floor they imply at the
    measured fp32 matmul rate, and with labelled data (--run-dir, a prepared dataset)
    accuracy / balanced accuracy / malignant AUROC of int8 vs fp32 on the test split.

Runners are timed in interleaved rounds so background load hits all of them alike;
timings on a shared machine are still noisy. Goal checked: int8 ONNX >= 3x faster
than eager at batch 1 with <= 0.5 point change in balanced accuracy.

    python benchmarks/bench_inference.py                            # random-weight defaults
    python benchmarks/bench_inference.py --checkpoint runs/demo/student --run-dir runs/demo
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dermae.classify.model import (
    build_classifier,
    classifier_config,
    load_classifier,
    save_classifier,
)
from dermae.data.classes import HAM10000_CLASSES
from dermae.deploy.export import ProbabilityModel, export_onnx
from dermae.deploy.images import uint8_to_input
from dermae.deploy.quantize import latency_stats, timing_key
from dermae.deploy.runtime import make_session
from dermae.engine.checkpoint import load_config_json

DEFAULT_ARCHS = ("efficientnet_b0", "mobilenetv3_large_100", "vit_tiny_patch16_224")
DEFAULT_SIZES = (64, 224)
MALIGNANT = ["akiec", "bcc", "mel"]
GOAL_SPEEDUP = 3.0
GOAL_MAX_BA_DROP = 0.005
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Measured fp32 matmul rate (GFLOP/s) of torch on this CPU with `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


def count_flops(model: torch.nn.Module, size: int) -> int:
    """FLOPs of one forward pass at batch 1 (FlopCounterMode counts a MAC as 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.rand(1, 3, size, size))
    return int(counter.get_total_flops())


def load_split_images(
    run_dir: Path, size: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Prepared dataset (dermae.data.prepared) -> {split: (float images, labels)}, real rows,
    at `size` px (None: the data's size; another is cached from the source files)."""
    from dermae.data.prepared import load_prepared

    data = load_prepared(run_dir, with_synthetic=False)
    if size is not None:
        data = data.at_size(size, progress=False)
    out = {}
    for split in ("train", "val", "test"):
        rows = data.rows(split)
        pixels = data.arrays["real"][rows["cache_index"].to_numpy()]
        out[split] = (uint8_to_input(pixels), rows["label"].to_numpy())
    return out


def time_runners(
    runners: dict[str, Any], x: np.ndarray, repeats: int, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Interleaved timing: each round runs every runner once, in a rotating order."""
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, start_cpu = time.perf_counter(), time.thread_time()
            runners[name](x)
            cpu[name].append((time.thread_time() - start_cpu) * 1000)
            wall[name].append((time.perf_counter() - start) * 1000)
    return {name: latency_stats(wall[name], cpu[name]) for name in names}


def make_runners(model: torch.nn.Module, export_dir: Path, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)

    def eager(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    runners: dict[str, Any] = {"eager": eager}
    for name, file in (("onnx_fp32", "model.onnx"), ("onnx_int8", "model.int8.onnx")):
        if (export_dir / file).exists():
            session = make_session(export_dir / file, threads)
            runners[name] = lambda x, s=session: s.run(None, {"images": x})
    return runners


def bench_model(
    name: str,
    checkpoint: Path,
    work: Path,
    threads: int,
    repeats: int,
    throughput_batch: int,
    gflops: float,
    data: dict[str, tuple[np.ndarray, np.ndarray]] | None,
) -> dict[str, Any]:
    classifier, config = load_classifier(checkpoint)
    size = int(config["image_size"])
    model = ProbabilityModel(classifier).eval()
    rng = np.random.default_rng(0)
    kwargs: dict[str, Any] = {}
    if data is not None:
        # Calibrate on train, judge int8 variants on val, report the change on test.
        train_x, _ = data["train"]
        pick = rng.choice(len(train_x), min(256, len(train_x)), replace=False)
        kwargs = {
            "calibration_images": train_x[np.sort(pick)],
            "val_images": data["val"][0],
            "val_labels": data["val"][1],
            "test_images": data["test"][0],
            "test_labels": data["test"][1],
        }
    else:
        kwargs = {"calibration_images": rng.random((64, 3, size, size), dtype=np.float32)}
    export_dir = work / f"{name}-export"
    started = time.perf_counter()
    export_onnx(checkpoint, export_dir, threads=threads, timing_repeats=20, **kwargs)
    export_s = time.perf_counter() - started
    quant = json.loads((export_dir / "quantization_report.json").read_text())

    runners = make_runners(model, export_dir, threads)
    x1 = rng.random((1, 3, size, size), dtype=np.float32)
    xb = rng.random((throughput_batch, 3, size, size), dtype=np.float32)
    lat = time_runners(runners, x1, repeats)
    thr = time_runners(runners, xb, max(5, repeats // 5), warmup=1)
    flops = count_flops(model, size)
    result: dict[str, Any] = {
        "name": name,
        "arch": config["arch"],
        "image_size": size,
        "parameters": int(sum(p.numel() for p in classifier.parameters())),
        "flops_b1": flops,
        "latency_floor_ms_at_matmul_rate": flops / (gflops * 1e9) * 1000,
        "export_seconds": export_s,
        "int8_variant": quant.get("chosen"),
        "int8_recommended": quant.get("recommended"),
        "int8_acceptance": quant.get("selection", {}).get("acceptable"),
        "size_bytes": {
            "safetensors": (checkpoint / "model.safetensors").stat().st_size,
            "onnx_fp32": (export_dir / "model.onnx").stat().st_size,
            "onnx_int8": (export_dir / "model.int8.onnx").stat().st_size
            if (export_dir / "model.int8.onnx").exists()
            else None,
        },
        "runners": {},
        "int8_variants": {
            v: {
                "latency_b1": e.get("latency_b1"),
                "test_delta_vs_fp32": e.get("test", {}).get("delta_vs_fp32"),
                "test_top1_agreement_vs_fp32": e.get("test", {}).get("top1_agreement_vs_fp32"),
                "val_top1_agreement_vs_fp32": e.get("val", {}).get("top1_agreement_vs_fp32"),
                "accepted": e.get("accepted"),
                "val_delta_vs_fp32": e.get("val", {}).get("delta_vs_fp32"),
                "error": e.get("error"),
            }
            for v, e in quant["variants"].items()
        },
    }
    key = timing_key(threads)
    result["timing_key"] = key
    for runner in runners:
        result["runners"][runner] = {
            "b1": lat[runner],
            f"b{throughput_batch}": thr[runner],
            f"b{throughput_batch}_images_per_s": throughput_batch / (thr[runner][key] / 1000),
        }
    eager = result["runners"]["eager"]["b1"]
    for runner in runners:
        b1 = result["runners"][runner]["b1"]
        result["runners"][runner]["speedup_vs_eager_b1"] = eager[key] / b1[key]
        result["runners"][runner]["speedup_vs_eager_b1_wall_median"] = (
            eager["median_ms"] / b1["median_ms"]
        )
    test_metrics = {
        v: quant["variants"][v]["test"]["metrics"]
        for v in ("fp32", quant.get("chosen"))
        if v and "metrics" in quant["variants"].get(v, {}).get("test", {})
    }
    result["test_metrics"] = test_metrics
    speedup = result["runners"].get("onnx_int8", {}).get("speedup_vs_eager_b1")
    ba_change = None
    if quant.get("chosen") in test_metrics and "fp32" in test_metrics:
        ba_change = (
            test_metrics[quant["chosen"]]["balanced_accuracy"]
            - test_metrics["fp32"]["balanced_accuracy"]
        )
    result["goal"] = {
        "int8_speedup_vs_eager_b1": speedup,
        "speedup_met": None if speedup is None else speedup >= GOAL_SPEEDUP,
        "balanced_accuracy_change": ba_change,
        "accuracy_met": None if ba_change is None else abs(ba_change) <= GOAL_MAX_BA_DROP,
    }
    return result


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Inference benchmark (CPU)",
        "",
        f"{meta['cpu']}, {meta['threads']} thread(s) for torch and onnxruntime alike, torch "
        f"{meta['torch']}, onnxruntime {meta['onnxruntime']}; measured fp32 matmul "
        f"{meta['matmul_gflops']:.0f} GFLOP/s (floor = FLOPs / that rate). {meta['note']}",
        "",
        "| model | px | MFLOPs | floor ms | runner | b1 CPU ms | b1 wall median | b1 wall p95 | "
        f"b{meta['throughput_batch']} img/s | speedup b1 | size MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_s = f"b{meta['throughput_batch']}_images_per_s"
    for r in results:
        sizes = {"eager": "safetensors", "onnx_fp32": "onnx_fp32", "onnx_int8": "onnx_int8"}
        for runner, m in r["runners"].items():
            size = r["size_bytes"].get(sizes[runner])
            label = runner + (f" ({r['int8_variant']})" if runner == "onnx_int8" else "")
            b1 = m["b1"]
            lines.append(
                f"| {r['name']} | {r['image_size']} | {r['flops_b1'] / 1e6:.0f} | "
                f"{r['latency_floor_ms_at_matmul_rate']:.2f} | {label} | "
                f"{b1['cpu_median_ms']:.2f} | {b1['median_ms']:.2f} | {b1['p95_ms']:.2f} | "
                f"{m[per_s]:.0f} | {m['speedup_vs_eager_b1']:.2f}x | "
                f"{'' if size is None else f'{size / 1e6:.1f}'} |"
            )
    lines += [
        "",
        "## Goal: int8 >= 3x faster than eager at batch 1, |Δ balanced accuracy| <= 0.5 pt",
        "",
    ]
    lines += [
        "| model | px | int8 variant | speedup | met | Δ BA (test) | met | served by default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        g = r["goal"]
        ba = g["balanced_accuracy_change"]
        lines.append(
            f"| {r['name']} | {r['image_size']} | {r['int8_variant']} | "
            f"{g['int8_speedup_vs_eager_b1'] or float('nan'):.2f}x | {_yes(g['speedup_met'])} | "
            f"{'n/a (no labelled data)' if ba is None else f'{100 * ba:+.2f} pt'} | "
            f"{_yes(g['accuracy_met'])} | {r['int8_recommended']} |"
        )
    rules = sorted({str(r.get("int8_acceptance")) for r in results if r.get("int8_acceptance")})
    lines += [
        "",
        "## int8 variants (chosen on validation: the fastest accepted; test only reported)",
        "",
        *[f"Accepted: {rule}." for rule in rules],
        "",
        "| model | px | variant | b1 CPU ms | val Δ BA | test Δ BA | test Δ acc | "
        "test Δ mal. AUROC | top-1 agreement with fp32, val | test | accepted |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name, v in r["int8_variants"].items():
            if name == "fp32":
                continue
            if v.get("error"):
                lines.append(f"| {r['name']} | {r['image_size']} | {name} | failed: {v['error']} |")
                continue
            val, test = v.get("val_delta_vs_fp32") or {}, v.get("test_delta_vs_fp32") or {}
            mark = " (chosen)" if name == r["int8_variant"] else ""
            val_agree, test_agree = (
                v.get("val_top1_agreement_vs_fp32"),
                v.get("test_top1_agreement_vs_fp32"),
            )
            lines.append(
                f"| {r['name']} | {r['image_size']} | {name}{mark} | "
                f"{v['latency_b1'][r['timing_key']]:.2f} | {_pt(val.get('balanced_accuracy'))} | "
                f"{_pt(test.get('balanced_accuracy'))} | {_pt(test.get('accuracy'))} | "
                f"{_pt(test.get('malignant_auroc'))} | "
                f"{_percent(val_agree)} | {_percent(test_agree)} | {_yes(v.get('accepted'))} |"
            )
    if any(r["goal"]["balanced_accuracy_change"] is None for r in results):
        lines += [
            "",
            "Without labelled data (random-weight models) the accuracy columns are n/a and "
            "'accepted' rests on top-1 agreement with fp32 on the calibration images alone, "
            "which says little for a random network's near-uniform outputs.",
        ]
    return "\n".join(lines) + "\n"


def _pt(delta: float | None) -> str:
    return "n/a" if delta is None else f"{100 * delta:+.2f} pt"


def _percent(share: float | None) -> str:
    return "" if share is None else f"{100 * share:.1f}%"


def _yes(flag: bool | None) -> str:
    return "not measured" if flag is None else ("yes" if flag else "NO")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", nargs="*", default=[], help="classifier checkpoint folders")
    parser.add_argument("--archs", nargs="*", default=list(DEFAULT_ARCHS))
    parser.add_argument("--sizes", nargs="*", type=int, default=list(DEFAULT_SIZES))
    parser.add_argument(
        "--run-dir", help="prepared dataset run dir: int8 accuracy on its test split"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime alike"
    )
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--throughput-batch", type=int, default=32)
    parser.add_argument("--out", default=str(RESULTS), help="folder for JSON + markdown")
    parser.add_argument("--tag", default="inference")
    parser.add_argument("--render", help="only rewrite the markdown of an earlier JSON result")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(markdown(report["results"], report["meta"]))
        return report

    data_at: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def data_for(checkpoint: Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """The labelled splits at the checkpoint's own size (a 128-px student on a 64-px run)."""
        if not args.run_dir:
            return None
        size = int(load_config_json(checkpoint)["image_size"])
        if size not in data_at:
            data_at[size] = load_split_images(Path(args.run_dir), size)
        return data_at[size]

    gflops = matmul_gflops(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="dermae-bench-") as tmp:
        work = Path(tmp)
        models: list[tuple[str, Path]] = []
        for ckpt in args.checkpoint:
            models.append((Path(ckpt).name, Path(ckpt)))
        if not models:
            for arch in args.archs:
                for size in args.sizes:
                    torch.manual_seed(0)
                    config = classifier_config(arch, list(HAM10000_CLASSES), MALIGNANT, size)
                    path = save_classifier(work / f"{arch}-{size}", build_classifier(config))
                    models.append((f"{arch} (random init)", path))
        for name, path in models:
            print(f"benchmarking {name} ...", flush=True)
            result = bench_model(
                name,
                path,
                work,
                args.threads,
                args.repeats,
                args.throughput_batch,
                gflops,
                data_for(path),
            )
            results.append(result)
            print(json.dumps(result["runners"], indent=1), flush=True)
    meta = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "matmul_gflops": gflops,
        "throughput_batch": args.throughput_batch,
        "run_dir": args.run_dir,
        "note": "Shared 2-core machine with other jobs running: wall times are noisy "
        "(interleaved rounds limit the bias between runners, not the noise). With 1 thread, "
        "speedups and img/s use the thread's CPU time (time.thread_time), which waiting "
        "for a core does not inflate.",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "results": results}
    (out / f"{args.tag}.json").write_text(json.dumps(report, indent=2))
    (out / f"{args.tag}.md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    return report


if __name__ == "__main__":
    main()
