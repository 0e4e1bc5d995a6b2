"""How many CPU threads torch computes with: the cores this process may use, never more.

torch's own default is the machine's cores, which in a container limited by a CPU quota can be far more
than it may use. Its OpenMP threads spin at every barrier, which is the fast choice on cores this process
has to itself: on an otherwise idle 2-core machine the quickstart's llava-1.5-tiny instruct stage ran
13,200-13,900 tokens/s with spinning threads against 8,100-8,400 with OMP_WAIT_POLICY=PASSIVE (sleeping
threads), runs alternated. On cores other processes keep busy it is the reverse: at load average 13-20 a step
took 4.4 s to over 25 s with 2 spinning threads, 0.29-0.41 s with 2 sleeping ones. So Loom leaves OpenMP's
wait policy to the environment; set OMP_WAIT_POLICY=PASSIVE before starting on a shared machine.
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
