"""1 vs 2 torch threads for a short training-step loop, on an idle machine and next to a busy one.

    python benchmarks/bench_threads.py --out benchmarks/results/threads.json   # < 2 min

Each measurement runs in a fresh process (so the OpenMP pool is sized once, as `dermae` does
at start-up): a resnet10t classifier at 64 px, batch 32, AdamW, `--steps` timed steps after
2 warm-up steps. "busy" starts one competing process that spins on one core for the whole
measurement, as another user's job would. The load average (`os.getloadavg`) before and after
is recorded, because on a shared machine other people's jobs are part of the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dermae.engine.threads import affinity_cpus, available_cpus, cgroup_cpus, resolve_threads

WORKER = """
import sys, time, torch, timm
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = timm.create_model("resnet10t", num_classes=7)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.rand(32, 3, 64, 64), torch.randint(0, 7, (32,))
times = []
for step in range(2 + int(sys.argv[2])):
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - start)
print(" ".join(f"{t:.5f}" for t in times[2:]))
"""

SPIN = "while True: pass"


def measure(threads: int, steps: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(threads), str(steps)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return [float(t) for t in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/threads.json"))
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    started = time.time()
    auto_at_start = resolve_threads(0)[0]
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    load_before = os.getloadavg()
    rows = []
    for condition in ("idle", "busy"):
        spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if condition == "busy" else None
        try:
            if spinner is not None:
                time.sleep(1.0)  # let it occupy its core
            for threads in (1, 2):
                times = measure(threads, args.steps)
                rows.append(
                    {
                        "condition": condition,
                        "threads": threads,
                        "median_step_s": round(statistics.median(times), 4),
                        "min_step_s": round(min(times), 4),
                        "max_step_s": round(max(times), 4),
                        "steps": len(times),
                    }
                )
                print(json.dumps(rows[-1]))
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    result = {
        "command": "python benchmarks/bench_threads.py --out " + str(args.out),
        "workload": "resnet10t, 64 px, batch 32, AdamW train step (forward + backward + step)",
        "cpus": {
            "os_cpu_count": os.cpu_count(),
            "affinity": affinity_cpus(),
            "cgroup_quota": cgroup_cpus(),
            "usable": available_cpus(),  # affinity and quota
            "dermae_auto_at_start": auto_at_start,  # less the busy ones (load average)
        },
        "uptime_before": uptime_before,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
