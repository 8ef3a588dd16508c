"""How many CPU threads to use: the idle cores this process may run on. Torch-free, so that ONNX
inference picks its threads the same way as training."""

from __future__ import annotations

import contextlib
import os
import time


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    return cores


def idle_cores(cores: int, seconds: float = 0.1) -> float:
    """How many cores were idle over a short sample of /proc/stat (all of them where it cannot be read)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return float(cores)
    machine_cores = os.cpu_count() or cores
    return min(cores, machine_cores * (idle1 - idle0) / max(1, total1 - total0))


def choose_threads(requested: int, local_processes: int = 1) -> int:
    """Threads per process: the idle usable cores, shared among this host's processes.

    More threads than free cores is catastrophic here, not merely wasteful: with one core busy elsewhere,
    a BiLSTM step on 2 threads ran 20-50x slower than on 1. Thread count does not change results on CPU
    (checked bit for bit with 1 and 2 threads), so this choice never affects reproducibility.
    """
    if requested > 0:
        return requested
    cores = usable_cores()
    free = max(1, round(idle_cores(cores) + 0.25)) if cores > 1 else 1
    return max(1, free // max(1, local_processes))
