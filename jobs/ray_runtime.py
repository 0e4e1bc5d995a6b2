"""Start a local Ray for a job, or join the cluster the user names."""
from __future__ import annotations

import contextlib
import logging
import os


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                worker_env: dict[str, str] | None = None, worker_setup_hook: str | None = None):
    """Ray for the length of one job: a cluster joined, or a local Ray started and shut down.

    The cluster is `address`, else `RAY_ADDRESS` (set in a job's driver by `ray job submit`);
    leaving a joined cluster only disconnects this driver. `worker_env` and `worker_setup_hook`
    (a dotted function name) reach every worker of the job, so a policy like the fetch guard
    holds in each process that downloads; Ray merges them with a submitted job's runtime_env.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        # Ray reads such an address as a Ray Client one and fails far from the cause.
        raise ValueError(f"Ray address {address}: that is a dashboard (job server) address, for "
                         "`ray job submit --address`; give the cluster's GCS address instead, e.g. HEAD:6379, "
                         "or unset RAY_ADDRESS to start a local Ray")
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; a Loom job starts or joins Ray itself, "
                           "so that its workers get the job's environment")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray Data's per-operator progress bars flood a terminal on small jobs; Loom prints its own.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    runtime_env = {}
    if worker_env:
        runtime_env["env_vars"] = worker_env
    if worker_setup_hook:
        runtime_env["worker_process_setup_hook"] = worker_setup_hook
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                  runtime_env=runtime_env or None)
    if address:  # a running cluster's size is its own: num_cpus is refused when joining
        ray.init(address=address, **kwargs)
    else:  # "local": never the cluster a `ray start` on this machine left in /tmp/ray, which ray.init() would join
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kwargs)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        yield ray
    finally:
        ray.shutdown()
