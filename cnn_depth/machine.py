"""What this machine has now: the cores this process may use, how many other processes keep busy, memory.

Measured each time they are asked (a busy host changes from one minute to the next); no constants fitted on
another machine. Used by the engine choice (:mod:`cnn_depth.plan`), GPU packing, the Learner's threads and the
decode pools.
"""
from __future__ import annotations

import os
import time
from typing import Optional


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity: a container or taskset may give fewer)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_cores(cpus: Optional[int] = None, busy: Optional[float] = None) -> int:
    """The cores other processes leave us: ``cpus`` (default :func:`available_cpus`) minus the cores they keep
    busy (default: :func:`busy_cores`, measured now over a quarter of a second), at least 1. The thread count
    of ``threads="auto"`` when training one run at a time: a sweep's serial engine, :func:`depth_learner`."""
    cpus = cpus or available_cpus()
    busy = busy_cores() if busy is None else busy
    return max(1, round(cpus - min(busy, cpus - 1)))


def available_memory() -> Optional[int]:
    """Bytes of memory available now (Linux's MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def busy_cores(interval: float = 0.25) -> float:
    """Cores of ours (this process's affinity) kept busy by other processes now: Linux's per-core /proc/stat
    over ``interval`` seconds, this process's own CPU time taken out; 0.0 where it cannot be read."""
    mine = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None

    def ticks():
        total = idle = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name.startswith("cpu") and name != "cpu" and (mine is None or name in mine):
                    v = [int(x) for x in values[:8]]
                    total, idle = total + sum(v), idle + v[3] + v[4]  # all, idle + iowait
        return total, idle

    try:
        (all0, idle0), own0 = ticks(), time.process_time()
        time.sleep(interval)
        (all1, idle1), own1 = ticks(), time.process_time()
    except (OSError, ValueError, IndexError):
        return 0.0
    cpus = len(mine) if mine else os.cpu_count() or 1
    if all1 <= all0:
        return 0.0
    seconds = (all1 - all0) / os.sysconf("SC_CLK_TCK") / cpus  # wall time the ticks span
    used = (all1 - all0 - (idle1 - idle0)) / (all1 - all0) * cpus
    return max(0.0, used - (own1 - own0) / max(seconds, 1e-9))
