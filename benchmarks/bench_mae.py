"""MAE pre-training and ViT fine-tuning throughput on this machine: images/s and peak memory.

Each (model, precision, phase) runs in a fresh subprocess so that peak RSS is its own.
Phases: "mae" = one MAE pre-training step (encoder on 25 % of patches + decoder);
"finetune" = one classifier step of the same ViT on all patches. Loops: "bare" = plain
PyTorch AdamW loop (autocast, backward, clip, step); "fit" = the same steps through
dermae.engine.loop.fit (Accelerate, timm AdamW + cosine schedule, logging), timed per step
with its on_step hook, set-up and the final checkpoint left out.

Other jobs share the CPU: timings are noisy; we report the median step time.

    PYTHONPATH=src python benchmarks/bench_mae.py --models vit_tiny_patch8 vit_small_patch8
    PYTHONPATH=src python benchmarks/bench_mae.py --real-run runs/x --threads 1 \
        --out benchmarks/results/mae_real_64px.json     # needs runs/x/data from `dermae prepare`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(
    model: str, precision: str, phase: str, loop: str, batch: int, size: int, steps: int
) -> list[dict]:
    """Child process: time training steps with loop "bare", "fit" or "both" (interleaved)."""
    import contextlib

    import torch

    from dermae.classify.common import ClassificationTask
    from dermae.classify.model import build_classifier, classifier_config
    from dermae.config import MAEConfig, TrainConfig
    from dermae.pretrain.mae import MAETask, build_mae, resolve_vit

    torch.manual_seed(0)
    base_rss = _rss_mb()
    if phase == "mae":
        task = MAETask(build_mae(MAEConfig(model=model), size))
        trainable = task.model
    else:
        arch, kwargs = resolve_vit(model)
        names = [f"c{i}" for i in range(7)]
        clf = build_classifier(
            classifier_config(arch, names, names[:3], size, {**kwargs, "global_pool": "avg"})
        )
        task = ClassificationTask(clf, "label")
        trainable = clf.net
    n_params = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    row = _row_factory(model, phase, precision, batch, size, n_params, base_rss)
    gen = torch.Generator().manual_seed(0)
    batch_data = {
        "image": torch.rand(batch, 3, size, size, generator=gen),
        "label": torch.randint(0, 7, (batch,), generator=gen),
    }

    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    def bare_times(n: int) -> list[float]:
        """n timed steps after 2 warm-up steps of a plain AdamW loop."""
        opt = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for i in range(n + 2):
            t0 = time.perf_counter()
            with autocast:
                loss = task(batch_data)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        return times

    def fit_times(n: int) -> list[float]:
        """n timed steps of dermae's fit (2 warm-up steps and the checkpointing last one left out)."""
        from torch.utils.data import Dataset

        from dermae.engine.loop import fit

        class Repeat(Dataset):
            def __len__(self):
                return batch * (n + 3)

            def __getitem__(self, i):
                return {k: v[i % batch] for k, v in batch_data.items()}

        cfg = TrainConfig(
            max_steps=n + 3,
            batch_size=batch,
            lr=1e-4,
            mixed_precision="bf16" if precision == "bf16" else "no",
            ckpt_every=10**9,  # only the final step checkpoints
        )
        stamps: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            fit(
                task,
                Repeat(),
                cfg,
                Path(tmp),
                model=trainable,
                resume=False,
                on_step=lambda _: stamps.append(time.perf_counter()),
            )
        return [b - a for a, b in zip(stamps[1:-2], stamps[2:-1], strict=True)]

    timed: dict[str, list[float]] = {"bare": [], "fit": []}
    if loop == "both":  # interleaved rounds, so that load drift hits both loops alike
        for _ in range(3):
            timed["bare"] += bare_times(steps)
            timed["fit"] += fit_times(steps)
    else:
        timed[loop] = bare_times(steps) if loop == "bare" else fit_times(steps)
    rows = []
    for name, times in timed.items():
        if times:
            rows.append(row(name, statistics.median(times), min(times)))
    if loop == "both":
        for r in rows:
            r["fit_over_bare_pct"] = round(100 * (rows[1]["step_s"] / rows[0]["step_s"] - 1), 1)
    return rows


def _row_factory(model, phase, precision, batch, size, n_params, base_rss):
    import torch

    def row(loop: str, step_s: float, best_s: float) -> dict:
        return {
            "model": model,
            "phase": phase,
            "precision": precision,
            "loop": loop,
            "batch": batch,
            "image_size": size,
            "params_m": round(n_params / 1e6, 2),
            "step_s": round(step_s, 4),
            "images_per_s": round(batch / step_s, 1),
            "best_step_s": round(best_s, 4),
            "best_images_per_s": round(batch / best_s, 1),
            "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
            "peak_rss_mb": round(_peak_mb(), 0),
            "rss_growth_mb": round(_peak_mb() - base_rss, 0),
            "threads": torch.get_num_threads(),
        }

    return row


def real_run(run_dir: Path, pre_steps: int, ft_steps: int) -> dict:
    """pretrain + finetune (MAE init, then scratch) on a prepared run dir; seconds and val scores.

    The run dir needs `data/` from `dermae prepare`; pretrain/ and teacher*/ are overwritten.
    """
    import shutil

    from dermae.classify.finetune import finetune
    from dermae.config import load_config
    from dermae.pretrain.train import pretrain

    overrides = [
        f"run_dir={run_dir}",
        "pretrain.model=vit_tiny_patch8",
        "finetune.model=vit_tiny_patch8",
        f"pretrain.train.max_steps={pre_steps}",
        "pretrain.train.lr=0.0015",
        "pretrain.train.warmup_steps=30",
        "pretrain.train.log_every=20",
        f"finetune.train.max_steps={ft_steps}",
        "finetune.train.lr=0.001",
        "finetune.train.warmup_steps=20",
        "finetune.train.log_every=20",
        f"finetune.train.eval_every={max(ft_steps // 2, 1)}",
    ]
    out: dict = {"pretrain_steps": pre_steps, "finetune_steps": ft_steps}
    t0 = time.perf_counter()
    pretrain(load_config(overrides=overrides), run_dir, resume=False)
    out["pretrain_s"] = round(time.perf_counter() - t0, 1)
    for init in ("mae", "scratch"):
        shutil.rmtree(run_dir / "teacher", ignore_errors=True)
        t0 = time.perf_counter()
        path = finetune(load_config(overrides=[*overrides, f"finetune.init={init}"]), run_dir)
        log = [json.loads(x) for x in (run_dir / "teacher/train/metrics.jsonl").open()]
        out[f"finetune_{init}"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "val": [
                {k: r[k] for k in ("step", "val_balanced_accuracy", "val_malignant_auroc")}
                for r in log
                if "val_balanced_accuracy" in r
            ],
            "best": json.loads((path / "config.json").read_text())["finetune"]["best"],
        }
        shutil.copytree(run_dir / "teacher", run_dir / f"teacher_{init}", dirs_exist_ok=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["vit_tiny_patch8", "vit_small_patch8"])
    parser.add_argument("--phases", nargs="+", default=["mae", "finetune"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--loops", nargs="+", default=["bare"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default=str(RESULTS / "mae.json"))
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--real-run", type=Path, help="prepared run dir: time pretrain+finetune")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=200)
    args = parser.parse_args()

    if args.real_run:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = real_run(args.real_run, args.pretrain_steps, args.finetune_steps)
        result["command"] = " ".join(sys.argv)
        result["load_avg_at_end"] = os.getloadavg()
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return

    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        m, prec, phase, loop, b, s, n = args.child
        print(json.dumps(run_one(m, prec, phase, loop, int(b), int(s), int(n))))  # list of rows
        return

    rows = []
    for model in args.models:
        for phase in args.phases:
            for precision in args.precisions:
                for loop in args.loops:
                    child = [model, precision, phase, loop, args.batch, args.image_size, args.steps]
                    proc = subprocess.run(
                        [sys.executable, __file__, "--threads", str(args.threads), "--child"]
                        + [str(c) for c in child],
                        capture_output=True,
                        text=True,
                        env={**os.environ, "PYTHONPATH": "src"},
                    )
                    if proc.returncode != 0:
                        print(f"FAILED {child}: {proc.stderr[-800:]}", file=sys.stderr)
                        continue
                    for row in json.loads(proc.stdout.strip().splitlines()[-1]):
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "note": "2 shared cores; other jobs ran at the same time: timings are noisy (median of steps)",
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"MAE / ViT fine-tune steps on {meta['cpus']} shared CPU cores "
        f"(load avg at end {meta['load_avg_at_end'][0]:.1f}; noisy). `{meta['command']}`",
        "",
        "| model | phase | precision | loop | batch | px | params (M) | s/step (median) | img/s (median) "
        "| img/s (best step) | peak RSS (MB) | load avg | fit vs bare |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['phase']} | {r['precision']} | {r['loop']} | {r['batch']} | "
            f"{r['image_size']} | {r['params_m']} | {r['step_s']:.3f} | {r['images_per_s']:.0f} | "
            f"{r['best_images_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['load_avg_1min_at_end']} | "
            + (f"{r['fit_over_bare_pct']:+.1f} % |" if "fit_over_bare_pct" in r else "|")
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
