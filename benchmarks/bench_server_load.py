"""Server load and memory: `dermae serve` on 127.0.0.1 under many normal and a few huge uploads.

Starts the server in a child process on 127.0.0.1 with a 64-px resnet10t (random weights,
ONNX fp32: the demo student's architecture) through `dermae.deploy.server.serve`, the
function `dermae serve` runs (`--launcher cli` goes through the CLI itself, so what the
CLI imports first counts too), then runs, each sequence bounded in requests and in time:

1. concurrency: `--rounds` rounds of `--parallel` simultaneous uploads of a normal image
   (a 600x450 JPEG, the size of a dermoscopy photo): latency p50 / p95 / max, statuses;
2. large images: `--large` simultaneous uploads of a 7000x7000 RGB PNG (~150 KB that
   decodes to 49 MP): statuses and the server's peak RSS while they run;
3. after a pause: the server's RSS against its idle RSS;
4. with `--huge N` (off by default): N simultaneous uploads of a ~19 MB noise PNG (just under
   the 20 MB upload limit): statuses and peak RSS (the issue measured 2.19 GB for N=20).

RSS is read from /proc/<pid>/status (VmRSS; VmHWM for the peak, reset between phases
through /proc/<pid>/clear_refs). Goals (issue 11): peak <= 400 MB under 6 large uploads,
back within 100 MB of idle, p95 of 50 x 4 within 1.5x of the server before the change.

    python benchmarks/bench_server_load.py --out benchmarks/results/server_load.json
    python benchmarks/bench_server_load.py --src /tmp/old/src ...  # another checkout's code
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

HOST = "127.0.0.1"  # never any other address: this sends hostile-sized uploads
ROOT = Path(__file__).resolve().parents[1]
GOAL_PEAK_MB = 400
GOAL_BACK_MB = 100
GOAL_P95_RATIO = 1.5


def build_export(work: Path, size: int = 64) -> Path:
    from dermae.classify.model import build_classifier, classifier_config, save_classifier
    from dermae.data.classes import HAM10000_CLASSES
    from dermae.deploy.export import export_onnx

    torch.manual_seed(0)
    config = classifier_config("resnet10t", list(HAM10000_CLASSES), ["akiec", "bcc", "mel"], size)
    ckpt = save_classifier(
        work / "ckpt", build_classifier(config), {"threshold": {"malignant_risk": 0.4}}
    )
    return export_onnx(ckpt, work / "export", int8=False, threads=1)


def normal_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:450, :600]
    blob = np.exp(-(((x - 300) / 120) ** 2 + ((y - 225) / 90) ** 2))
    pixels = np.stack([220 - 120 * blob, 170 - 110 * blob, 150 - 100 * blob], -1)
    pixels += rng.normal(0, 8, pixels.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def large_png(side: int = 7000) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 150, 130)).save(buf, "PNG")
    return buf.getvalue()


def proc_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {
        "p50_s": round(float(np.percentile(arr, 50)), 4),
        "p95_s": round(float(np.percentile(arr, 95)), 4),
        "max_s": round(float(arr.max()), 4),
    }


async def burst(
    base: str, data: bytes, name: str, ctype: str, n: int, timeout_s: float
) -> list[tuple[int, float]]:
    """n simultaneous uploads -> (status, seconds) each; status 0 for a client-side failure."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as client:

        async def one(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            try:
                r = await client.post("/predict", files={"file": (f"{i}-{name}", data, ctype)})
                return r.status_code, time.perf_counter() - started
            except httpx.HTTPError:
                return 0, time.perf_counter() - started

        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout_s)


def statuses(results: list[tuple[int, float]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for code, _ in results:
        out[str(code)] = out.get(str(code), 0) + 1
    return dict(sorted(out.items()))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/server_load.json")
    parser.add_argument("--src", type=Path, help="run the server from this src/ folder")
    parser.add_argument("--model", type=Path, help="export folder (default: build a test one)")
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--large", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=60.0, help="per sequence, seconds")
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--launcher", choices=["serve", "cli"], default="serve")
    parser.add_argument("--huge", type=int, default=0, help="uploads of a ~19 MB PNG at once")
    args = parser.parse_args(argv)

    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="dermae-bench-load-") as tmp:
        model = args.model or build_export(Path(tmp))
        src = (args.src or ROOT / "src").resolve()
        env = {**os.environ, "PYTHONPATH": str(src)}
        port = free_port()
        if args.launcher == "cli":
            cmd = [sys.executable, "-m", "dermae.cli", "serve", "--model", str(model)]
            cmd += ["--host", HOST, "--port", str(port)]
        else:
            code = "import sys; from dermae.deploy.server import serve; "
            code += f"serve(sys.argv[1], host='{HOST}', port=int(sys.argv[2]))"
            cmd = [sys.executable, "-c", code, str(model), str(port)]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://{HOST}:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {server.stderr.read().decode()}")
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            pid = server.pid
            time.sleep(1.0)
            idle = proc_mb(pid, "VmRSS")

            jpeg = normal_jpeg()
            latencies: list[float] = []
            rounds = []
            reset_peak(pid)
            for _ in range(args.rounds):
                res = asyncio.run(
                    burst(base, jpeg, "a.jpg", "image/jpeg", args.parallel, args.timeout)
                )
                latencies += [t for code, t in res if code == 200]
                rounds.append(statuses(res))
            concurrency = {
                "parallel": args.parallel,
                "rounds": args.rounds,
                "image": f"600x450 JPEG, {len(jpeg):,} bytes",
                "statuses_per_round": rounds,
                "latency_ok": percentiles(latencies),
                "peak_rss_mb": round(proc_mb(pid, "VmHWM"), 1),
                "rss_after_mb": round(proc_mb(pid, "VmRSS"), 1),
            }

            png = large_png()
            peak_reset = reset_peak(pid)
            before_large = proc_mb(pid, "VmRSS")
            res = asyncio.run(burst(base, png, "big.png", "image/png", args.large, args.timeout))
            large = {
                "parallel": args.large,
                "image": f"7000x7000 RGB PNG, {len(png):,} bytes",
                "statuses": statuses(res),
                "latency": percentiles([t for _, t in res]),
                "rss_before_mb": round(before_large, 1),
                "peak_rss_mb": round(proc_mb(pid, "VmHWM"), 1),
                "peak_is_since_reset": peak_reset,
            }
            time.sleep(3.0)
            after = proc_mb(pid, "VmRSS")
            huge = None
            if args.huge:
                noise = np.random.default_rng(1).integers(0, 255, (2520, 2520, 3), np.uint8)
                buf = io.BytesIO()
                Image.fromarray(noise).save(buf, "PNG", compress_level=1)
                reset_peak(pid)
                res = asyncio.run(
                    burst(base, buf.getvalue(), "huge.png", "image/png", args.huge, args.timeout)
                )
                time.sleep(3.0)
                huge = {
                    "parallel": args.huge,
                    "image": f"2520x2520 noise PNG, {len(buf.getvalue()):,} bytes",
                    "statuses": statuses(res),
                    "latency": percentiles([t for _, t in res]),
                    "peak_rss_mb": round(proc_mb(pid, "VmHWM"), 1),
                    "rss_3s_after_mb": round(proc_mb(pid, "VmRSS"), 1),
                }
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    result: dict[str, Any] = {
        "label": args.label,
        "command": "python benchmarks/bench_server_load.py " + " ".join(argv or sys.argv[1:]),
        "server": f"{args.launcher} (resnet10t 64 px, ONNX fp32), src={src}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "idle_rss_mb": round(idle, 1),
        "concurrency": concurrency,
        "large": large,
        "rss_3s_after_large_mb": round(after, 1),
        "huge_uploads": huge,
        "goals": {
            "peak_rss_large_mb": [large["peak_rss_mb"], f"<= {GOAL_PEAK_MB}"],
            "back_above_idle_mb": [round(after - idle, 1), f"<= {GOAL_BACK_MB}"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
