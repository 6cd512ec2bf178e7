"""Build the measured record of a whole `dermae run` (stage seconds, wall time, peak memory,
generator quality) from its run directory and the `/usr/bin/time -v` log, so no number in
`benchmarks/results/*_run.json` is typed by hand.

    uptime > before.txt
    /usr/bin/time -v dermae run -c configs/cpu-full.yaml > runs/cpu-full.log 2>&1
    uptime > after.txt
    python benchmarks/run_record.py runs/cpu-full runs/cpu-full.log \\
        --uptime-before before.txt --uptime-after after.txt \\
        --out benchmarks/results/cpu_full_run.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

TIME_FIELDS = {
    "wall": re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)"),
    "max_rss_kb": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
    "exit_status": re.compile(r"Exit status: (\d+)"),
}
SHELL_REAL = re.compile(r"^real\s+(\d+)m([\d.]+)s$", re.MULTILINE)  # bash's `time`
PIPELINE = re.compile(r"\[dermae\] pipeline finished in (\d+) s")
THREADS = re.compile(r"dermae: (\d+) torch thread\(s\) \((.*)\)[ \t]*$", re.MULTILINE)


def clock_seconds(text: str) -> float:
    """'1:48:52' or '48:52.31' -> seconds."""
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def parse_time_log(text: str) -> dict[str, Any]:
    """Wall time, peak RSS, exit status, pipeline seconds and thread count from a run's log.

    Raises ValueError naming what is missing: a log without `/usr/bin/time -v` output cannot
    give a wall time, and a record without one would be a guess.
    """
    pipeline = PIPELINE.findall(text)
    threads = THREADS.search(text)
    record: dict[str, Any] = {
        "pipeline_s": int(pipeline[-1]) if pipeline else None,
        "torch_threads": f"{threads.group(1)} ({threads.group(2)})" if threads else None,
    }
    shell_time = SHELL_REAL.search(text)
    if TIME_FIELDS["wall"].search(text) is None and shell_time is not None:
        # `time make demo` (the README's command): wall time only, `.venv` set-up included.
        minutes, seconds = shell_time.groups()
        return {"wall_s": round(int(minutes) * 60 + float(seconds)), **record}
    found: dict[str, Any] = {}
    for key, pattern in TIME_FIELDS.items():
        match = pattern.search(text)
        if match is None:
            raise ValueError(
                f"no '{key}' line in the log: was the run wrapped in /usr/bin/time -v "
                "(or the shell's `time`)?"
            )
        found[key] = match.group(1)
    return {
        "wall_s": round(clock_seconds(found["wall"])),
        "pipeline_s": record["pipeline_s"],
        "max_rss_kb": int(found["max_rss_kb"]),
        "exit_status": int(found["exit_status"]),
        "torch_threads": record["torch_threads"],
    }


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds of each stage as its done mark recorded them, in pipeline order."""
    from dermae.pipeline import STAGE_NAMES

    seconds = {}
    for name in STAGE_NAMES:
        mark = run_dir / "stages" / f"{name}.json"
        if mark.is_file():
            seconds[name] = round(json.loads(mark.read_text())["seconds"], 1)
    return seconds


def lent_stages(run_dir: Path) -> dict[str, str]:
    """Stages whose output this run borrows by symlink from another run, with the lender.

    A study folder may link an earlier run's data, generator or teachers instead of training
    them again; its stage marks were copied along, so their seconds are the lender's.
    """
    from dermae.pipeline import STAGE_NAMES

    lent = {}
    for name in STAGE_NAMES:
        mark = run_dir / "stages" / f"{name}.json"
        if not mark.is_file():
            continue
        inside = json.loads(mark.read_text()).get("output_in_run")
        if not inside:
            continue
        path = run_dir
        for part in Path(inside).parts:  # the output folder or a folder above it
            path = path / part
            if path.is_symlink():
                lent[name] = str(path.readlink())
                break
    return lent


def generator_record(run_dir: Path) -> dict[str, Any]:
    """VAE reconstruction, filter acceptance, fidelity and near-copies, when the run made them."""
    record: dict[str, Any] = {}
    vae = run_dir / "synth" / "vae" / "metrics.json"
    if vae.is_file():
        metrics = json.loads(vae.read_text())
        record["vae_val"] = {
            k: metrics[k] for k in ("psnr", "ssim", "latent_shape") if k in metrics
        }
    quality = run_dir / "synth" / "synth_quality.json"
    if quality.is_file():
        q = json.loads(quality.read_text())
        per_class = q.get("per_class", {})
        if "filter" in q:
            record["synthetic_filter"] = q["filter"]
        for key, out in (
            ("class_fidelity", "class_fidelity"),
            ("real_val_fidelity", "judge_recall_on_real_val"),
            ("near_copies_feature", "near_copies_feature"),
            ("near_copies_pixel", "near_copies_pixel"),
        ):
            record[out] = {c: v[key] for c, v in per_class.items() if key in v}
    return record


def describe_machine(cpuinfo: str, meminfo: str, cores: int | None) -> str:
    """'2 cores AMD EPYC (AVX-512, bf16 without AMX), 24 GB, no GPU' from /proc text.

    The generator's speed hangs on the bf16 path (AMX against AVX-512 BF16 against none:
    BENCHMARKS.md sections 18 and 42), so the record names it instead of assuming one.
    """
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    if "amx_bf16" in flags:
        bf16 = "bf16 by AMX"
    elif "avx512_bf16" in flags:
        bf16 = "bf16 by AVX-512 BF16, no AMX"
    else:
        bf16 = "no bf16 instructions"
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    memory = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    gigabytes = f"{int(memory.group(1)) / 2**20:.0f} GB" if memory else "memory unknown"
    name = model.group(1).strip() if model else "unknown CPU"
    return f"{cores or '?'} cores {name} ({vector}, {bf16}), {gigabytes}"


def this_machine() -> str:
    """`describe_machine` of the machine running this script (no GPU check: CPU records)."""

    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return describe_machine(read("/proc/cpuinfo"), read("/proc/meminfo"), cores)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def build_record(
    run_dir: Path,
    log: Path,
    command: str,
    machine: str,
    uptime_before: str | None = None,
    uptime_after: str | None = None,
    commit: str | None = None,
) -> dict[str, Any]:
    timing = parse_time_log(log.read_text(errors="replace"))
    return {
        "command": command,
        "commit": commit,
        "machine": machine,
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        **timing,
        "stages_s": stage_seconds(run_dir),
        "stages_lent": lent_stages(run_dir),  # their seconds are the lender's
        **generator_record(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "log",
        type=Path,
        help="stdout+stderr of `/usr/bin/time -v dermae run` (or of the shell's `time make demo`)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--uptime-before", type=Path)
    parser.add_argument("--uptime-after", type=Path)
    parser.add_argument("--command", default="dermae run -c configs/cpu-full.yaml")
    parser.add_argument(
        "--machine", help="what ran it (default: read from /proc: cores, CPU, bf16 path, memory)"
    )
    parser.add_argument("--commit", help="the commit the run used (default: HEAD)")
    args = parser.parse_args()
    for path in (args.run_dir, args.log):
        if not path.exists():
            parser.error(f"{path} does not exist")

    def read(path: Path | None) -> str | None:
        return path.read_text().strip() if path else None

    record = build_record(
        args.run_dir,
        args.log,
        args.command,
        args.machine or this_machine(),
        read(args.uptime_before),
        read(args.uptime_after),
        args.commit or git_commit(),
    )
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}: wall {record['wall_s']} s, stages {record['stages_s']}")


if __name__ == "__main__":
    main()
