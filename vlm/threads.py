"""How many CPU threads torch computes with: the cores this process may use, never more.

torch's own default is the machine's cores, which in a container limited by a CPU quota can be far more
than it may use, and its OpenMP threads spin at every barrier. Measured on a 2-core machine other processes
kept busy (load average 13-20, runs alternated), a llava-1.5-tiny training step took 4.4 s to over 25 s at
torch's default (2 spinning threads, 2.7 CPU-seconds a step), 0.9-2.6 s at 1 thread, and 0.29-0.41 s at 2
threads with OMP_WAIT_POLICY=PASSIVE (threads sleep at barriers; 0.33 CPU-seconds a step), which `import vlm`
asks for unless the environment says otherwise.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD", or "max PERIOD" for none


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or not in its format
        pass
    return max(1, cores)


def training_threads(requested: int | None = None) -> int:
    """The intra-op threads a stage trains with: `requested` (train.threads) when given, else OMP_NUM_THREADS
    when set (a user's choice, or Ray's for a worker: its CPUs), else `available_cores()`."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads {requested}: expected a whole number of at least 1")
        return requested
    from_environment = os.environ.get("OMP_NUM_THREADS", "").strip()
    if from_environment.isdigit() and int(from_environment) >= 1:
        return int(from_environment)
    return available_cores()
