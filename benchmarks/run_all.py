"""Run every benchmark in turn on an otherwise idle machine; results land in benchmarks/results/.

    python benchmarks/run_all.py            # all of them (tens of minutes on 2 cores)
    python benchmarks/run_all.py synth mae  # a subset

Each script writes JSON + a markdown table; BENCHMARKS.md quotes them with these commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCHES = {
    "synth": ["benchmarks/bench_synth.py", "--out", str(RESULTS / "synth.json")],
    "mae": [
        "benchmarks/bench_mae.py",
        "--models",
        "vit_tiny_patch8",
        "vit_small_patch8",
        "--loops",
        "bare",
        "fit",
        "--out",
        str(RESULTS / "mae.json"),
    ],
    "distill": [
        "benchmarks/bench_distill_cache.py",
        "--out",
        str(RESULTS / "distill_cache.json"),
        "--work",
        "/tmp/dermae-bench-distill",
    ],
    "inference": ["benchmarks/bench_inference.py", "--out", str(RESULTS)],
}


def main(names: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    for name in names or list(BENCHES):
        if name not in BENCHES:
            print(f"unknown benchmark '{name}'; choose from {', '.join(BENCHES)}")
            return 2
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, *BENCHES[name]], cwd=ROOT, env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
