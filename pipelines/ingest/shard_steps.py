"""The per-shard steps of ingest (screen, download, filter) and the scheduler that runs them as Ray tasks.

Each download shard is one Ray task: screen its rows (refused rows are never fetched), fetch
the rest with img2dataset into a folder of this attempt's own (renamed into place when it
finishes, so a zombie attempt never interleaves with its retry), check and hash the images,
and keep the shard's rows in `_work/samples/<shard>.parquet`. The driver gets back counts.

A task that dies (its worker killed for memory, a native crash, its node lost) is retried by
the scheduler, not by Ray: after `max_attempts` failures the shard is quarantined, its rows
dropped as `shard_failed` with the last error, and the job goes on.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.ingest import filters
from pipelines.ingest.download import DownloadConfig, download_shard, read_shard, shard_stem
from pipelines.ingest.fetch_guard import FetchPolicy
from pipelines.ingest.outcomes import download_drop_reason
from pipelines.ingest.samples import FETCH_COLUMNS, SAMPLES_SCHEMA, failed_shard_rows, stamp
from pipelines.ingest.sources import Source, read_source
from pipelines.manifest import write_json_atomic, write_parquet_atomic

# test hook: a shard whose stem is named here kills its worker (os._exit) on every attempt, as a
# shard that reliably runs its worker out of memory does; never set outside the fault tests
CRASH_ENV = "LOOM_FAULT_CRASH_SHARDS"


def split_source(source: Source, index: int, folder: str, per_shard: int) -> list[tuple[str, int]] | str:
    """Ray task: read one URL-list file and cut it into download-shard inputs; (name, rows) of each,
    or the reason the file cannot be read."""
    try:
        rows = read_source(source)
    except ValueError as err:
        return str(err)
    parts = []
    for part, start in enumerate(range(0, rows.num_rows, per_shard)):
        name = f"s{index:05d}-{part:05d}.parquet"
        chunk = rows.slice(start, per_shard)
        write_parquet_atomic(chunk, Path(folder) / name)
        parts.append((name, chunk.num_rows))
    return parts


def plan_shards(ray, sources: list[Source], work: str | Path, per_shard: int) -> dict | list[str]:
    """Cut the input rows into download shards, once, each URL-list file read by a Ray task of its own (the
    driver never holds the rows), so a resumed run fetches exactly the same shards. Returns the plan (shard
    input names and rows), or the reasons some URL lists cannot be read."""
    folder = Path(work) / "input"
    plan_path = folder / "_plan.json"
    if plan_path.exists():
        return json.loads(plan_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    split = ray.remote(split_source)
    results = ray.get([split.remote(source, i, str(folder), per_shard) for i, source in enumerate(sources)])
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        return problems
    plan = {"shards": [name for parts in results for name, _ in parts],
            "rows_per_shard": [count for parts in results for _, count in parts],
            "rows": sum(count for parts in results for _, count in parts), "per_shard": per_shard}
    write_json_atomic(plan_path, plan)
    return plan


def samples_path(work: str | Path, shard: int) -> Path:
    return Path(work) / "samples" / f"{shard_stem(shard)}.parquet"


def screen_shard(rows: pa.Table, shard: int, policy: FetchPolicy, config: filters.FilterConfig) -> pa.Table:
    """A shard's input rows, each refused or not from the row alone (URL, caption, language)."""
    rows = filters.screen_rows(rows, policy, config)
    rows = rows.append_column("stage", pa.nulls(rows.num_rows, pa.string()))
    rows = stamp(rows, "screen")
    return rows.append_column("shard", pa.array([shard] * rows.num_rows, pa.int64()))


def fetched_rows(rows: pa.Table, shard: int, folder: str | Path, config: DownloadConfig) -> pa.Table:
    """img2dataset fetches the screened rows still kept (unless an earlier attempt finished the shard);
    each row gets its download status, sizes, content hash and image bytes."""
    to_fetch = rows.filter(pc.is_null(rows["drop_reason"]))
    if to_fetch.num_rows:
        download_shard(to_fetch, shard, folder, config)
        fetched = read_shard(folder, shard)
    else:
        fetched = pa.schema([SAMPLES_SCHEMA.field("row_id")] + [SAMPLES_SCHEMA.field(c) for c in FETCH_COLUMNS]
                            + [pa.field("jpg", pa.binary())]).empty_table()
    picked = fetched.take(pc.index_in(rows["row_id"], value_set=fetched["row_id"]))
    for name in (*FETCH_COLUMNS, "jpg"):
        rows = rows.append_column(name, picked[name])
    return rows


def filtered_rows(batch: pa.Table, config: filters.FilterConfig) -> pa.Table:
    """Failed fetches get their reason; the images fetched are checked (size, aspect) and hashed; the
    rows come back without their image bytes, as SAMPLES_SCHEMA."""
    failed = pc.and_(pc.is_null(batch["drop_reason"]), pc.not_equal(batch["status"], "success"))
    reasons = [download_drop_reason(s, e) if f else None for f, s, e in
               zip(failed.to_pylist(), batch["status"].to_pylist(), batch["error_message"].to_pylist())]
    batch = stamp(filters.mark(batch, reasons), "download")
    batch = stamp(filters.perceptual_hash(filters.image_geometry(batch, config)), "filter")
    return batch.drop_columns(["jpg"]).select(SAMPLES_SCHEMA.names).cast(SAMPLES_SCHEMA)


def process_shard(work: str, input_name: str, shard: int, policy: FetchPolicy, config: filters.FilterConfig,
                  download: DownloadConfig) -> dict:
    """Ray task: one download shard through screen, download and filter into `_work/samples`; its counts."""
    if shard_stem(shard) in os.environ.get(CRASH_ENV, "").split(","):
        os._exit(137)  # what the kernel's OOM killer leaves of a worker
    rows = pq.read_table(Path(work) / "input" / input_name)
    rows = filtered_rows(fetched_rows(screen_shard(rows, shard, policy, config), shard, Path(work) / "download",
                                      download), config)
    write_parquet_atomic(rows, samples_path(work, shard))
    return {"rows": rows.num_rows, "fetched": pc.sum(pc.equal(rows["status"], "success")).as_py() or 0,
            "dropped": pc.sum(pc.is_valid(rows["drop_reason"])).as_py() or 0}


def quarantine(work: str | Path, input_name: str, shard: int, error: str) -> None:
    """A shard that failed every attempt: its rows kept in `_work/samples` as dropped (`shard_failed`)."""
    rows = pq.read_table(Path(work) / "input" / input_name)
    write_parquet_atomic(failed_shard_rows(rows, shard, error), samples_path(work, shard))


def run_shards(ray, work: str | Path, inputs: list[str], policy: FetchPolicy, config: filters.FilterConfig,
               download: DownloadConfig, max_attempts: int, log=print) -> dict:
    """Every download shard without kept rows yet through `process_shard`, a bounded number in flight;
    a shard failing `max_attempts` times is quarantined. Returns the shards quarantined, with their errors."""
    work = Path(work)
    failures_dir = work / "failures"
    pending = [i for i in range(len(inputs)) if not samples_path(work, i).exists()]
    quarantined = {}
    for path in sorted(failures_dir.glob("*.json")) if failures_dir.exists() else []:
        record = json.loads(path.read_text())
        if record.get("quarantined"):
            quarantined[path.stem] = record["errors"][-1]
    if not pending:
        return quarantined
    log(f"ingest: {len(pending)} of {len(inputs)} download shard(s) to fetch")
    task = ray.remote(max_retries=0)(process_shard)  # retried here, with a count, not forever by Ray
    in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    queue, refs, done = list(reversed(pending)), {}, 0
    while queue or refs:
        while queue and len(refs) < in_flight:
            shard = queue.pop()
            refs[task.remote(str(work), inputs[shard], shard, policy, config, download)] = shard
        ready, _ = ray.wait(list(refs), num_returns=1)
        shard = refs.pop(ready[0])
        try:
            counts = ray.get(ready[0])
        except Exception as err:  # noqa: BLE001 - a worker crash, an OOM kill, a lost node, an error in the step
            record_path = failures_dir / f"{shard_stem(shard)}.json"
            record = json.loads(record_path.read_text()) if record_path.exists() else {"errors": []}
            record["errors"].append(_error_text(err))
            failed = len(record["errors"])
            if failed >= max_attempts:
                record["quarantined"] = True
                quarantine(work, inputs[shard], shard, record["errors"][-1])
                quarantined[shard_stem(shard)] = record["errors"][-1]
                log(f"ingest: shard {shard_stem(shard)} failed {failed} time(s); quarantined, its rows dropped as "
                    f"shard_failed: {record['errors'][-1]}")
            else:
                queue.append(shard)
                log(f"ingest: shard {shard_stem(shard)} failed (attempt {failed} of {max_attempts}), retrying: "
                    f"{record['errors'][-1]}")
            write_json_atomic(record_path, record)
            continue
        done += 1
        log(f"ingest: shard {shard_stem(shard)} done ({done}/{len(pending)}): {counts['rows']} rows, "
            f"{counts['fetched']} fetched, {counts['dropped']} dropped")
    return quarantined


def _error_text(err: BaseException) -> str:
    """The first line that says what happened, without Ray's traceback framing."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"[:500]
    return (f"{type(err).__name__}: " + (lines[0] if lines else "")).strip()[:500]
