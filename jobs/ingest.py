"""`loom ingest`: URL lists → pairs shards, on Ray, with every input row accounted for.

The job is its settings and `run_ingest`; the steps live in pipelines/ingest/:
1. plan: each URL list cut into download shards by a Ray task of its own;
2. per shard (`shard_steps`): screen, download with img2dataset, filter; a shard whose task keeps
   dying is quarantined after `max_shard_attempts`;
3. decisions (`decide`): exact and near dedup in hash partitions, the language quota from rank
   histograms, all as Ray tasks;
4. finalize (`finalize`): each shard's kept rows and its part of `dropped/`, then the pairs shards.
The driver holds the plan, per-shard and per-partition counts and histograms: never a row.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Sequence

from jobs.config import ConfigError, require, section
from pipelines.ingest import filters
from pipelines.ingest.download import DownloadConfig, clear_unfinished
from pipelines.ingest.fetch_guard import POLICY_ENV, FetchPolicy
from pipelines.ingest.mix import normalise_ratios
from pipelines.ingest.sources import Source
from pipelines.manifest import (
    StageRecord,
    input_fingerprint,
    is_complete,
    read_manifest,
    start_or_resume,
)

def ingest_settings(config: dict, written: Sequence[str | Path] = ()) -> dict:
    """The ingest section over its defaults, each source's card, layout and files checked; a card source's glob
    under one of `written` (folders an earlier stage of the run writes, as the demo's) may match nothing yet."""
    cfg = section(config, "ingest")  # types and ranges: jobs/schema.py
    from jobs.user_folders import use_user_folders
    from pipelines.ingest.sources import SourceConfigError

    use_user_folders(config, ("catalog",))  # a caption-pair card of the user's names its URL list's columns
    entry_of_prefix: dict[str, int] = {}
    for i, src in enumerate(cfg["sources"]):
        try:
            # a card source expands its glob here, so no match fails early
            resolved = Source.from_config(src, missing_ok=_under(src.get("path"), written))
        except SourceConfigError as err:
            key = f"ingest.sources[{i}]" + (f".{err.key}" if err.key else "")
            raise ConfigError(f"{key}: {err}") from err
        for source in resolved:
            earlier = entry_of_prefix.setdefault(source.row_prefix, i)
            require(earlier == i, f"ingest.sources[{i}]: its row ids ({source.row_prefix}:<row>) would repeat those "
                    f"of ingest.sources[{earlier}]; give one of them a distinct name:")
    try:
        filter_config = filters.FilterConfig.from_config(cfg["filters"], list(cfg["languages"]))
        filters.LanguageId(filter_config)  # every language of the mix is one the identifier knows
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return cfg


def _under(path: str | None, folders: Sequence[str | Path]) -> bool:
    if not path or "://" in path:
        return False
    return any(Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder)) for folder in folders)


def _fingerprint(path: str) -> str:
    fingerprint = input_fingerprint(path)
    if fingerprint is None:
        raise ConfigError(f"ingest.sources: {path}: no such file")
    return fingerprint


@contextlib.contextmanager
def _serving(folder: str | None):
    if not folder:
        yield
        return
    from pipelines.shapes_world import serve_demo_world

    with serve_demo_world(folder):
        yield


def run_ingest(config: dict, out: str | Path, ray_address: str | None = None, log=print) -> dict:
    """Run (or resume, or skip) the ingest stage into `out/ingest`; return its manifest."""
    cfg = ingest_settings(config)
    policy = fetch_policy(cfg)  # a bad CIDR is refused here, before any work
    sources = [source for entry in cfg["sources"] for source in Source.from_config(entry)]
    stage_dir = Path(out) / "ingest"
    inputs = {s.path: _fingerprint(s.path) for s in sources}
    if is_complete(stage_dir, cfg, inputs):
        log(f"ingest: complete in {stage_dir} (same config and inputs); skipped")
        return read_manifest(stage_dir)
    # a half-finished run resumes only under the same config and the same URL lists
    start_or_resume(stage_dir, {"ingest": cfg, "inputs": inputs})
    work = stage_dir / "_work"
    work.mkdir(exist_ok=True)
    record = StageRecord("ingest", cfg, inputs)
    filter_config = filters.FilterConfig.from_config(cfg["filters"], list(cfg["languages"]))
    download_config = DownloadConfig(cfg["image_size"], cfg["resize_mode"], cfg["encode_quality"], cfg["threads"],
                                     cfg["timeout"], cfg["retries"], cfg["download_shard_size"],
                                     tuple(cfg["robots_directives"]))

    from jobs.ray_runtime import ray_session
    from pipelines.ingest.decide import clear_shuffles, decide
    from pipelines.ingest.finalize import finalize_run
    from pipelines.ingest.figures import download_throughput
    from pipelines.ingest.shard_steps import plan_shards, run_shards

    worker_env = {POLICY_ENV: policy.to_env(), "OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg["max_pixels"])}
    with _serving(cfg["serve"]), ray_session(ray_address, worker_env=worker_env,
                                             worker_setup_hook="pipelines.ingest.fetch_guard.install") as ray:
        phases, clock = {}, time.perf_counter()

        def lap(name: str) -> None:  # where the stage's time goes, for the report and bench/ingest.py
            nonlocal clock
            phases[name] = round(time.perf_counter() - clock, 2)
            clock = time.perf_counter()

        plan = plan_shards(ray, sources, work, cfg["download_shard_size"])
        if isinstance(plan, list):
            raise ConfigError("ingest.sources: " + "; ".join(plan))
        record.rows_in = plan["rows"]
        log(f"ingest: {plan['rows']} rows from {len(sources)} source(s) in {len(plan['shards'])} download shard(s)")
        lap("read_and_plan")
        removed = clear_unfinished(work / "download")
        if removed:
            log(f"ingest: resuming; discarded {len(removed)} unfinished download attempt(s) of a stopped run")
        quarantined = run_shards(ray, work, plan["shards"], policy, filter_config, download_config,
                                 cfg["max_shard_attempts"], log)
        lap("screen_download_filter")
        decided = decide(ray, work, plan["rows_per_shard"], normalise_ratios(cfg["languages"]), cfg["seed"],
                         filter_config.near_duplicate_radius, filter_config.near_duplicate_search,
                         filter_config.near_duplicate_recall, cfg["partitions"], log=log)
        lap("dedup_and_mix")
        totals, written = finalize_run(ray, work, stage_dir, decided, cfg["samples_per_shard"], log)
        clear_shuffles(work)
        lap("finalize_and_write_shards")

    dropped = sum(totals["dropped"].values())
    if totals["rows"] != plan["rows"] or totals["kept"] + dropped != plan["rows"]:
        raise RuntimeError(f"ingest bookkeeping: {plan['rows']} rows in, {totals['rows']} finalized, {totals['kept']} "
                           f"kept + {dropped} dropped. This is a Loom bug: please report it.")
    for reason, count in totals["dropped"].items():
        record.drop(reason, count)
    record.rows_out = totals["kept"]
    record.extra.update(
        # each pairs shard with its rows and tar bytes: the next stage checks what it reads against them
        shards=[os.path.relpath(shard["path"], stage_dir) for shard in written],
        shard_rows=[shard["rows"] for shard in written],
        shard_bytes=[shard["bytes"] for shard in written],
        dropped_parts="dropped",  # one parquet part per download shard: one table to pyarrow, polars, datasets, Ray
        languages=decided["mix"],
        kept_by_source=dict(sorted(totals["kept_by_source"].items())),
        dropped_by_stage=dict(sorted(totals["dropped_by_stage"].items())),
        phase_seconds=phases,
        dedup=decided["dedup"],
        quarantined_shards=quarantined,
        figures={**totals["figures"], "download_throughput": download_throughput(totals["download"])},
    )
    manifest = record.finish(stage_dir)
    log(f"ingest: kept {totals['kept']} of {plan['rows']}; dropped {manifest['dropped']}; "
        f"mix {decided['mix']['kept_share']}")
    return manifest


def fetch_policy(cfg: dict) -> FetchPolicy:
    try:
        return FetchPolicy(cfg["allow_private_network"], tuple(cfg["allowed_networks"]), int(cfg["max_bytes"]),
                           int(cfg["max_pixels"]), float(cfg["max_seconds"]))
    except ValueError as err:
        raise ConfigError(str(err)) from err
