"""How many torch CPU threads to use: what this process may really run on, set once at start-up.

`os.cpu_count()` reports the machine's cores, not the ones a container or `taskset` grants,
and OpenMP threads beyond those spin while they wait for a core (BENCHMARKS.md, "Threads").
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

THREADS_ENV = "DERMAE_THREADS"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC_LOADAVG = Path("/proc/loadavg")


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (taskset, cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cgroup_cpus(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The cgroup v2 CPU quota in CPUs ("200000 100000" -> 2.0); None when unlimited or absent."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def available_cpus() -> int:
    """min(affinity, cgroup quota rounded down, at least 1)."""
    cpus = affinity_cpus()
    quota = cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def runnable_others(path: Path = PROC_LOADAVG, samples: int = 5) -> int | None:
    """Tasks runnable right now besides this one (/proc/loadavg's 4th field), median of a few
    samples 10 ms apart; None where there is no /proc."""
    counts = []
    for _ in range(samples):
        try:
            running = int(path.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, running - 1))
        time.sleep(0.01)
    return sorted(counts)[len(counts) // 2]


def busy_cpus() -> int:
    """CPUs other work keeps busy: the 1-minute load average, capped by what is runnable now
    (so the command that finished a moment ago does not count)."""
    try:
        load = round(os.getloadavg()[0])
    except OSError:  # not available on this platform
        return 0
    now = runnable_others()
    return load if now is None else min(load, now)


def resolve_threads(setting: int = 0) -> tuple[int, str]:
    """(threads, where the number came from).

    Order: the config's `threads` when > 0; else `DERMAE_THREADS`; else `OMP_NUM_THREADS` (the
    habit the README used to recommend); else the CPUs this process may use, less those the
    load average says are busy (a thread without a free core spins: 2 threads beside one busy
    process measured 7-9x slower than 1, BENCHMARKS.md), shared among the processes of a
    `torchrun`/`accelerate launch` on this machine.
    """
    if setting > 0:
        return setting, "config threads"
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                if int(value) > 0:
                    return int(value), name
            except ValueError:
                raise ValueError(f"{name}={value!r} must be a whole number of threads") from None
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cpus, busy = available_cpus(), busy_cpus()
    free = max(1, cpus - busy)
    source = f"auto: {cpus} usable CPUs, ~{busy} busy, {local_processes} process(es)"
    return max(1, free // local_processes), source


def apply_threads(setting: int = 0) -> tuple[int, str]:
    """Resolve and apply (torch.set_num_threads); returns what `resolve_threads` returns."""
    import torch  # here, so that `export_threads` (serve, predict) does not load torch

    threads, source = resolve_threads(setting)
    torch.set_num_threads(threads)
    return threads, source


def export_threads(setting: int = 0) -> tuple[int, str]:
    """Resolve, and set OMP_NUM_THREADS for libraries not imported yet (torch sizes its pool
    from it on import), without importing torch: for commands that may never need it."""
    threads, source = resolve_threads(setting)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return threads, source


__all__ = [
    "THREADS_ENV",
    "affinity_cpus",
    "apply_threads",
    "available_cpus",
    "busy_cpus",
    "cgroup_cpus",
    "export_threads",
    "resolve_threads",
    "runnable_others",
]
