"""`loom ingest`: URL lists → pairs shards, on Ray, with every input row accounted for.

Download and resize run in img2dataset (its Ray distributor); the per-sample filters run as
Ray Data operators over the downloaded tars; dedup and the language mix are global decisions
made on metadata alone; the kept pairs are written as shards by Ray tasks.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.config import ConfigError, require, section
from pipelines.ingest import filters
from pipelines.ingest.dedup import check_radius, mark_duplicates
from pipelines.ingest.download import (
    DownloadConfig,
    clear_unfinished,
    download_shard,
    read_shard,
    shard_stem,
)
from pipelines.ingest.fetch_guard import POLICY_ENV, FetchPolicy
from pipelines.ingest.mix import apply_mix, normalise_ratios
from pipelines.ingest.outcomes import download_drop_reason
from pipelines.ingest.shards import read_tar_spans, write_pairs_shard
from pipelines.ingest.sources import Source, read_source
from pipelines.manifest import (
    StageRecord,
    input_fingerprint,
    is_complete,
    read_manifest,
    start_or_resume,
    write_json_atomic,
    write_parquet_atomic,
)

DEFAULTS = {
    "sources": [],
    "serve": None,  # a shapes-world folder to serve over loopback while the job runs (demo data)
    "image_size": 224,
    "resize_mode": "keep_ratio",
    "encode_quality": 90,
    "languages": {"en": 0.773, "zh": 0.227},
    "filters": {},
    "allow_private_network": False,
    "allowed_networks": [],  # CIDRs fetched even though private, e.g. an internal mirror
    "max_bytes": 32 * 1024 * 1024,  # per image body
    "max_pixels": 89_478_485,  # checked from the header, before decoding (decompression bombs)
    "max_seconds": 60.0,  # per image body, however slowly a server sends it
    "seed": 0,
    "samples_per_shard": 1000,
    "download_shard_size": 1000,
    "threads": 32,
    "timeout": 10,
    "retries": 1,
}
FETCH_COLUMNS = ("key", "status", "error_message", "width", "height", "original_width", "original_height",
                 "sha256", "download_tar", "jpg_offset", "jpg_size")
# What the whole-run decisions (dedup, mix, the shard plan) read of each row still kept after the
# per-shard operators; rows already dropped, and every other column, stay on disk (work/samples).
# The driver holds these for every such row at once: see README "Ingest at scale" for the bytes.
DECISION_COLUMNS = ["shard", "key", "source", "lang", "sha256", "phash"]
SAMPLES_SCHEMA = pa.schema(  # one row per input row after the per-shard operators, kept in work/samples
    [("shard", pa.int64()), ("row_id", pa.string()), ("source", pa.string()), ("url", pa.string()),
     ("caption", pa.string()), ("lang", pa.string()), ("lang_confidence", pa.float32()),
     ("key", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
     ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()),
     ("original_height", pa.int32()), ("sha256", pa.string()), ("phash", pa.string()),
     ("download_tar", pa.string()), ("jpg_offset", pa.int64()), ("jpg_size", pa.int64()),
     ("stage", pa.string()), ("drop_reason", pa.string())]
)
DROPPED_SCHEMA = pa.schema(
    [("row_id", pa.string()), ("source", pa.string()), ("url", pa.string()), ("caption", pa.string()),
     ("key", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)


def ingest_settings(config: dict) -> dict:
    cfg = section(config, "ingest", DEFAULTS)
    require(bool(cfg["sources"]), "ingest.sources: empty; name at least one URL list, e.g. "
            "[{path: urls.parquet, url_col: url, caption_col: caption}] or [{card: cc3m, path: /data/cc3m/*.tsv}]")
    from pipelines.ingest.sources import SourceConfigError

    entry_of_prefix: dict[str, int] = {}
    for i, src in enumerate(cfg["sources"]):
        require(isinstance(src, dict) and ("path" in src or "card" in src),
                f"ingest.sources[{i}]: {src!r}; expected {{path: ..., url_col: url, caption_col: caption}} "
                "or {card: NAME, path: ...} (`loom catalog list --kind pairs` lists the cards)")
        try:
            resolved = Source.from_config(src)  # a card source expands its glob here, so no match fails early
        except SourceConfigError as err:
            key = f"ingest.sources[{i}]" + (f".{err.key}" if err.key else "")
            raise ConfigError(f"{key}: {err}") from err
        for source in resolved:
            earlier = entry_of_prefix.setdefault(source.row_prefix, i)
            require(earlier == i, f"ingest.sources[{i}]: its row ids ({source.row_prefix}:<row>) would repeat those "
                    f"of ingest.sources[{earlier}]; give one of them a distinct name:")
    require(cfg["resize_mode"] in ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"),
            f"ingest.resize_mode: {cfg['resize_mode']!r}; expected one of no, keep_ratio, "
            "keep_ratio_largest, center_crop, border (img2dataset's modes)")
    normalise_ratios(cfg["languages"])
    try:
        filter_config = filters.FilterConfig.from_config(cfg["filters"], list(cfg["languages"]))
        check_radius(filter_config.near_duplicate_radius)
        filters.LanguageId(filter_config)  # every language of the mix is one the identifier knows
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return cfg


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
                                     cfg["timeout"], cfg["retries"], cfg["download_shard_size"])

    from jobs.ray_runtime import ray_session

    worker_env = {POLICY_ENV: policy.to_env(), "OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg["max_pixels"])}
    with _serving(cfg["serve"]), ray_session(ray_address, worker_env=worker_env,
                                             worker_setup_hook="pipelines.ingest.fetch_guard.install") as ray:
        phases, clock = {}, time.perf_counter()

        def lap(name: str) -> None:  # where the stage's time goes, for the report and bench/ingest.py
            nonlocal clock
            phases[name] = round(time.perf_counter() - clock, 2)
            clock = time.perf_counter()

        plan = _plan_shards(ray, sources, work, cfg["download_shard_size"])
        record.rows_in = plan["rows"]
        log(f"ingest: {plan['rows']} rows from {len(sources)} source(s) in {len(plan['shards'])} download shard(s)")
        lap("read_and_plan")
        samples = _fetch_and_filter(ray, work, plan["shards"], policy, filter_config, download_config, log)
        lap("screen_download_filter")
        dedup: dict = {}
        decided = _stamp(mark_duplicates(samples, filter_config.near_duplicate_radius, counters=dedup), "dedup")
        decided, mix_report = apply_mix(decided, normalise_ratios(cfg["languages"]), cfg["seed"])
        decided = _stamp(decided, "mix")
        if decided.height != samples.height:
            raise RuntimeError(f"ingest bookkeeping: dedup and mix turned {samples.height} rows into "
                               f"{decided.height}. This is a Loom bug: please report it.")
        lap("dedup_and_mix")
        # the pairs shards are written by Ray tasks while the driver streams dropped.parquet
        parts = _by_shard(decided, len(plan["shards"]))  # each download shard's decisions, for both writers
        writing = _submit_shards(ray, work, decided, parts, stage_dir / "shards", cfg["samples_per_shard"])
        drops = _write_dropped(ray, work, parts, stage_dir / "dropped.parquet")
        kept = decided.filter(pl.col("drop_reason").is_null())
        shard_paths = ray.get(writing)
        log(f"ingest: wrote {len(shard_paths)} pairs shard(s) to {stage_dir / 'shards'}")
        lap("write_shards")

    if kept.height + drops["rows"] != plan["rows"]:
        raise RuntimeError(f"ingest bookkeeping: {plan['rows']} rows in, {kept.height} kept + {drops['rows']} "
                           "dropped. This is a Loom bug: please report it.")
    for reason, count in drops["reasons"].items():
        record.drop("duplicate" if reason.startswith("duplicate_of ") else reason, count)
    record.rows_out = kept.height
    record.extra.update(
        shards=[os.path.relpath(p, stage_dir) for p in shard_paths],
        languages=mix_report,
        kept_by_source=dict(kept.group_by("source").len().sort("source").iter_rows()),
        dropped_by_stage=dict(sorted(drops["stages"].items())),
        phase_seconds=phases,
        dedup=dedup,
    )
    manifest = record.finish(stage_dir)
    log(f"ingest: kept {kept.height} of {plan['rows']}; dropped {manifest['dropped']}; "
        f"mix {mix_report['kept_share']}")
    return manifest


def fetch_policy(cfg: dict) -> FetchPolicy:
    try:
        return FetchPolicy(cfg["allow_private_network"], tuple(cfg["allowed_networks"]), int(cfg["max_bytes"]),
                           int(cfg["max_pixels"]), float(cfg["max_seconds"]))
    except ValueError as err:
        raise ConfigError(str(err)) from err


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


def _plan_shards(ray, sources: list[Source], work: Path, per_shard: int) -> dict:
    """Cut the input rows into download shards, once, each URL-list file read by a Ray task of its
    own (the driver never holds the rows): a resumed run fetches exactly the same shards."""
    folder = work / "input"
    plan_path = folder / "_plan.json"
    if plan_path.exists():
        return json.loads(plan_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    split = ray.remote(split_source)
    results = ray.get([split.remote(source, i, str(folder), per_shard) for i, source in enumerate(sources)])
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        raise ConfigError("ingest.sources: " + "; ".join(problems))
    plan = {"shards": [name for parts in results for name, _ in parts],
            "rows": sum(count for parts in results for _, count in parts), "per_shard": per_shard}
    write_json_atomic(plan_path, plan)
    return plan


def _fetch_and_filter(ray, work: Path, inputs: list[str], policy: FetchPolicy, config: filters.FilterConfig,
                      download: DownloadConfig, log) -> pl.DataFrame:
    """Each download shard through three Ray Data operators, streamed shard by shard so that one
    shard's filters run while others download: screen its rows, fetch the rest with img2dataset,
    check and hash the images. Each finished shard's rows are kept in `work/samples`; what the
    whole-run decisions need of them (DECISION_COLUMNS) is returned."""
    shard_count = len(inputs)
    samples_dir = work / "samples"
    samples_dir.mkdir(exist_ok=True)
    removed = clear_unfinished(work / "download")
    if removed:
        log(f"ingest: resuming; discarded {len(removed)} download shard(s) a stopped run left unfinished")
    pending = [i for i in range(shard_count) if not (samples_dir / f"{shard_stem(i)}.parquet").exists()]
    if pending:
        log(f"ingest: {len(pending)} of {shard_count} download shard(s) to fetch")
        # One fused operator: Ray Data's per-operator reservation only holds back half the CPUs
        # while the first task runs (measured: the second of 2 CPUs idle for its first second).
        ray.data.DataContext.get_current().op_resource_reservation_enabled = False
        ds = ray.data.from_items([{"shard": i} for i in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(screen_shards, fn_kwargs={"work": str(work), "inputs": inputs, "policy": policy,
                                                      "config": config},
                            batch_size=None, batch_format="pyarrow")
        ds = ds.map_batches(fetch_shards, fn_kwargs={"work": str(work), "config": download},
                            batch_size=None, batch_format="pyarrow")
        ds = ds.map_batches(filter_shards, fn_kwargs={"work": str(work), "config": config},
                            batch_size=None, batch_format="pyarrow")
        done = 0
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for shard in sorted(set(block["shard"].to_pylist())):
                done += 1
                rows = block.filter(pc.equal(block["shard"], shard))
                fetched = pc.sum(pc.equal(rows["status"], "success")).as_py() or 0
                log(f"ingest: shard {shard_stem(shard)} done ({done}/{len(pending)}): {rows.num_rows} rows, "
                    f"{fetched} fetched, {pc.sum(pc.is_valid(rows['drop_reason'])).as_py()} dropped")
    still_kept = pc.is_null(pc.field("drop_reason"))
    tables = [pq.read_table(samples_dir / f"{shard_stem(i)}.parquet", columns=DECISION_COLUMNS, filters=still_kept)
              for i in range(shard_count)]
    schema = pa.schema([SAMPLES_SCHEMA.field(c) for c in DECISION_COLUMNS])
    return pl.from_arrow(pa.concat_tables(tables) if tables else schema.empty_table()).with_columns(
        pl.col("sha256").str.decode("hex"),  # 32 bytes instead of 64 hex digits each
        pl.col("phash").str.decode("hex"),
        drop_reason=pl.lit(None, pl.String), stage=pl.lit(None, pl.String))


def screen_shards(batch: pa.Table, work: str, inputs: list[str], policy: FetchPolicy,
                  config: filters.FilterConfig) -> pa.Table:
    """Ray Data operator: a shard's input rows, each refused or not from the row alone (URL, caption,
    language) before anything is fetched."""
    tables = []
    for shard in batch["shard"].to_pylist():
        rows = pq.read_table(Path(work) / "input" / inputs[shard])
        rows = filters.screen_rows(rows, policy, config)
        rows = rows.append_column("stage", pa.array([None] * rows.num_rows, pa.string()))
        rows = _stamp_arrow(rows, "screen")
        tables.append(rows.append_column("shard", pa.array([shard] * rows.num_rows, pa.int64())))
    return pa.concat_tables(tables)


def fetch_shards(batch: pa.Table, work: str, config: DownloadConfig) -> pa.Table:
    """Ray Data operator: img2dataset fetches a shard's screened rows (unless a stopped run finished
    that shard); each row gets its download status, sizes, content hash and image bytes."""
    tables = []
    folder = Path(work) / "download"
    for shard in sorted(set(batch["shard"].to_pylist())):
        rows = batch.filter(pc.equal(batch["shard"], shard))
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
        tables.append(rows)
    return pa.concat_tables(tables)


def filter_shards(batch: pa.Table, work: str, config: filters.FilterConfig) -> pa.Table:
    """Ray Data operator: failed fetches get their reason; the images fetched are checked (size,
    aspect) and hashed; the shard's rows, without image bytes, are kept in `work/samples`."""
    failed = pc.and_(pc.is_null(batch["drop_reason"]), pc.not_equal(batch["status"], "success"))
    reasons = [download_drop_reason(s, e) if f else None for f, s, e in
               zip(failed.to_pylist(), batch["status"].to_pylist(), batch["error_message"].to_pylist())]
    batch = _stamp_arrow(filters.mark(batch, reasons), "download")
    batch = _stamp_arrow(filters.perceptual_hash(filters.image_geometry(batch, config)), "filter")
    batch = batch.drop_columns(["jpg"]).select(SAMPLES_SCHEMA.names).cast(SAMPLES_SCHEMA)
    for shard in sorted(set(batch["shard"].to_pylist())):
        write_parquet_atomic(batch.filter(pc.equal(batch["shard"], shard)),
                             Path(work) / "samples" / f"{shard_stem(shard)}.parquet")
    return batch


def _stamp_arrow(batch: pa.Table, stage: str) -> pa.Table:
    """Name `stage` as where each row dropped since the last stamp was dropped."""
    fresh = pc.and_(pc.is_valid(batch["drop_reason"]), pc.is_null(batch["stage"]))
    return batch.set_column(batch.schema.get_field_index("stage"), "stage",
                            pc.if_else(fresh, pa.scalar(stage), batch["stage"]))


def _stamp(samples: pl.DataFrame, stage: str) -> pl.DataFrame:
    fresh = pl.col("drop_reason").is_not_null() & pl.col("stage").is_null()
    return samples.with_columns(pl.when(fresh).then(pl.lit(stage)).otherwise(pl.col("stage")).alias("stage"))


def _drops(samples: pl.DataFrame) -> pa.Table:
    detail = (
        pl.when(pl.col("drop_reason") == "language")
        .then(pl.lit("detected ") + pl.col("lang") + pl.lit(" (confidence ")
              + pl.col("lang_confidence").round(3).cast(pl.String) + pl.lit(")"))
        .when(pl.col("stage") == "download").then(pl.col("error_message"))
        .otherwise(None)
    )
    return samples.select(
        "row_id", "source", "url", "caption", "key", "stage", pl.col("drop_reason").alias("reason"),
        detail.alias("detail"),
    ).to_arrow().cast(DROPPED_SCHEMA)


def shard_rows(work: str, shard: int, decided: pa.Table) -> pl.DataFrame:
    """A download shard's rows (work/samples) with the whole-run decisions (dedup, mix) applied.

    `decided` holds (key, drop_reason, stage) of the shard's rows that reached those decisions;
    every other row keeps the reason the per-shard operators gave it."""
    rows = pl.from_arrow(pq.read_table(Path(work) / "samples" / f"{shard_stem(shard)}.parquet"))
    if rows["row_id"].n_unique() != rows.height:
        raise RuntimeError(f"ingest bookkeeping: shard {shard} repeats a row. This is a Loom bug: please report it.")
    decided = pl.from_arrow(decided).select("key", pl.col("drop_reason").alias("decided_reason"),
                                            pl.col("stage").alias("decided_stage"))
    joined = rows.join(decided, on="key", how="left", maintain_order="left")  # null keys (never fetched) match nothing
    if joined.height != rows.height or joined.filter(pl.col("decided_stage").is_not_null()
                                                     & pl.col("drop_reason").is_not_null()).height:
        raise RuntimeError(f"ingest bookkeeping: shard {shard}: a whole-run decision names a key twice or a row "
                           "already dropped. This is a Loom bug: please report it.")
    return (joined.with_columns(pl.coalesce("drop_reason", "decided_reason").alias("drop_reason"),
                                pl.coalesce("stage", "decided_stage").alias("stage"))
            .drop("decided_reason", "decided_stage"))


def shard_drops(work: str, shard: int, decided: pa.Table) -> pa.Table:
    """Ray task: a download shard's dropped rows, as dropped.parquet holds them."""
    rows = shard_rows(work, shard, decided)
    return _drops(rows.filter(pl.col("drop_reason").is_not_null()))


def _by_shard(decided: pl.DataFrame, shard_count: int) -> dict[int, pa.Table]:
    """Each download shard's part of the whole-run decisions (empty for a shard none of whose rows reached them)."""
    columns = ["key", "drop_reason", "stage"]
    parts = {shard: part.select(columns).to_arrow()
             for (shard,), part in decided.partition_by("shard", as_dict=True).items()}
    empty = decided.select(columns).clear().to_arrow()
    return {shard: parts.get(shard, empty) for shard in range(shard_count)}


def _write_dropped(ray, work: Path, parts: dict[int, pa.Table], path: Path) -> dict:
    """dropped.parquet, streamed shard by shard (a Ray task each), so no step holds every dropped row."""
    task = ray.remote(shard_drops)
    refs = [task.remote(str(work), shard, parts[shard]) for shard in sorted(parts)]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    counts = {"rows": 0, "reasons": Counter(), "stages": Counter()}
    with pq.ParquetWriter(tmp, DROPPED_SCHEMA) as writer:
        for ref in refs:
            table = ray.get(ref)
            writer.write_table(table)
            counts["rows"] += table.num_rows
            counts["reasons"].update(table["reason"].to_pylist())
            counts["stages"].update(table["stage"].to_pylist())
    os.replace(tmp, path)
    return counts


def write_pairs_piece(out_dir: str, index: int, work: str, pieces: list[tuple[int, int, int]],
                      decided: dict[int, pa.Table]) -> str:
    """Ray task: pairs shard `index` from (download shard, first, end) slices of each shard's kept rows in key order."""
    rows: list[dict] = []
    for shard, first, end in pieces:
        kept = shard_rows(work, shard, decided[shard]).filter(pl.col("drop_reason").is_null()).sort("key")
        rows.extend(kept.slice(first, end - first).to_dicts())
    wanted: dict[str, dict[str, tuple[int, int]]] = {}
    for row in rows:
        wanted.setdefault(row["download_tar"], {})[row["key"]] = (row["jpg_offset"], row["jpg_size"])
    images: dict[str, bytes] = {}
    for tar_path, spans in wanted.items():
        images.update(read_tar_spans(tar_path, spans))
    return write_pairs_shard(out_dir, index, rows, images)


def _submit_shards(ray, work: Path, decided: pl.DataFrame, parts: dict[int, pa.Table], out_dir: Path,
                   per_shard: int) -> list:
    """Start writing pairs shards of `per_shard` kept rows in key order (download shard, then row), each
    by a Ray task that reads its rows from the download shards; the driver only passes counts. Returns
    the tasks' references (each gives its shard's tar path)."""
    kept_counts = dict(decided.filter(pl.col("drop_reason").is_null()).group_by("shard").len().iter_rows())
    pieces: list[list[tuple[int, int, int]]] = [[]]
    room = per_shard
    for shard in sorted(kept_counts):
        first = 0
        while first < kept_counts[shard]:
            if room == 0:
                pieces.append([])
                room = per_shard
            end = min(kept_counts[shard], first + room)
            pieces[-1].append((shard, first, end))
            room -= end - first
            first = end
    pieces = [p for p in pieces if p]
    write = ray.remote(write_pairs_piece)
    return [write.remote(str(out_dir), i, str(work), piece, {s: parts[s] for s, _, _ in piece})
            for i, piece in enumerate(pieces)]
