"""`loom ingest`: URL lists → pairs shards, on Ray, with every input row accounted for.

Download and resize run in img2dataset (its Ray distributor); the per-sample filters run as
Ray Data operators over the downloaded tars; dedup and the language mix are global decisions
made on metadata alone; the kept pairs are written as shards by Ray tasks.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.config import ConfigError, require, section
from pipelines.ingest import filters
from pipelines.ingest.dedup import mark_duplicates
from pipelines.ingest.fetch_guard import POLICY_ENV, FetchPolicy
from pipelines.ingest.mix import apply_mix, normalise_ratios
from pipelines.ingest.outcomes import download_drop_reason
from pipelines.ingest.shards import read_tar_members, write_pairs_shard
from pipelines.ingest.sources import Source, caption_problem, read_source, url_problem
from pipelines.manifest import StageRecord, input_fingerprint, is_complete, read_manifest, start_or_resume

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
    filters.FilterConfig.from_config(cfg["filters"], list(cfg["languages"]))
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
    dropped: list[pa.Table] = []

    from jobs.ray_runtime import ray_session

    worker_env = {POLICY_ENV: policy.to_env(), "OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg["max_pixels"])}
    with _serving(cfg["serve"]), ray_session(ray_address, worker_env=worker_env,
                                             worker_setup_hook="pipelines.ingest.fetch_guard.install") as ray:
        rows = pa.concat_tables([read_source(s) for s in sources])
        record.rows_in = rows.num_rows
        log(f"ingest: {rows.num_rows} rows from {len(sources)} source(s)")

        phases, clock = {}, time.perf_counter()

        def lap(name: str) -> None:  # where the stage's time goes, for the report and bench/ingest.py
            nonlocal clock
            phases[name] = round(time.perf_counter() - clock, 2)
            clock = time.perf_counter()

        to_fetch, refused = _refuse_unfetchable(rows, policy)
        dropped.append(refused)
        downloaded = _download(to_fetch, work, cfg, log)
        dropped.append(_failed_downloads(downloaded))
        lap("download")

        tars = _finished_download_tars(work / "download")
        samples = _filter_on_ray(ray, tars, filter_config) if tars else _empty_samples()
        lap("filters")
        samples = mark_duplicates(samples)
        samples, mix_report = apply_mix(samples, normalise_ratios(cfg["languages"]), cfg["seed"])
        kept = samples.filter(pl.col("drop_reason").is_null()).sort("key")
        dropped.append(_filter_drops(samples.filter(pl.col("drop_reason").is_not_null())))
        lap("dedup_and_mix")
        shard_paths = _write_shards(ray, kept, stage_dir / "shards", cfg["samples_per_shard"], log)
        lap("write_shards")

    dropped_table = pa.concat_tables([t.cast(DROPPED_SCHEMA) for t in dropped])
    _check_every_row_once(rows, kept, dropped_table)
    pq.write_table(dropped_table, work / "dropped.parquet")
    os.replace(work / "dropped.parquet", stage_dir / "dropped.parquet")
    for reason in dropped_table["reason"].to_pylist():
        record.drop("duplicate" if reason.startswith("duplicate_of ") else reason)
    record.rows_out = kept.height
    record.extra.update(
        shards=[os.path.relpath(p, stage_dir) for p in shard_paths],
        languages=mix_report,
        kept_by_source=dict(kept.group_by("source").len().sort("source").iter_rows()),
        phase_seconds=phases,
    )
    manifest = record.finish(stage_dir)
    shutil.rmtree(work / "_tmp", ignore_errors=True)
    log(f"ingest: kept {kept.height} of {rows.num_rows}; dropped {manifest['dropped']}; "
        f"mix {mix_report['kept_share']}")
    return manifest


def fetch_policy(cfg: dict) -> FetchPolicy:
    try:
        return FetchPolicy(cfg["allow_private_network"], tuple(cfg["allowed_networks"]), int(cfg["max_bytes"]),
                           int(cfg["max_pixels"]), float(cfg["max_seconds"]))
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _refuse_unfetchable(rows: pa.Table, policy: FetchPolicy) -> tuple[pa.Table, pa.Table]:
    reasons = [
        url_problem(url, policy) or caption_problem(caption)
        for url, caption in zip(rows["url"].to_pylist(), rows["caption"].to_pylist())
    ]
    refused = pa.array([r is not None for r in reasons])
    fetch = rows.filter(pa.compute.invert(refused))
    bad = rows.filter(refused)
    bad = bad.append_column("key", pa.array([None] * bad.num_rows, pa.string()))
    bad = bad.append_column("stage", pa.array(["validate"] * bad.num_rows, pa.string()))
    bad = bad.append_column("reason", pa.array([r for r in reasons if r], pa.string()))
    bad = bad.append_column("detail", pa.array([None] * bad.num_rows, pa.string()))
    return fetch, bad


def _download(rows: pa.Table, work: Path, cfg: dict, log) -> pa.Table:
    """img2dataset on the Ray cluster; returns its per-sample status table (one row per input)."""
    from img2dataset import download

    url_list = work / "download_input.parquet"
    if not url_list.exists():
        pq.write_table(rows, work / ".download_input.tmp.parquet")
        os.replace(work / ".download_input.tmp.parquet", url_list)
    started = time.time()
    download(
        url_list=str(url_list),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["row_id", "source"],
        output_format="webdataset",
        output_folder=str(work / "download"),
        image_size=cfg["image_size"],
        resize_mode=cfg["resize_mode"],
        resize_only_if_bigger=True,
        encode_format="jpg",
        encode_quality=cfg["encode_quality"],
        thread_count=cfg["threads"],
        number_sample_per_shard=cfg["download_shard_size"],
        timeout=cfg["timeout"],
        retries=cfg["retries"],
        distributor="ray",
        compute_hash="sha256",
        extract_exif=False,
        enable_wandb=False,
        incremental_mode="incremental",
    )
    finished = _finished_download_tars(work / "download")  # a shard img2dataset gave up on stops here, clearly
    columns = ["key", "status", "error_message", "row_id", "source", "url", "caption"]
    statuses = pa.concat_tables(
        [pq.read_table(Path(p).with_suffix(".parquet"), columns=columns) for p in finished]
    ) if finished else pa.table({c: pa.array([], pa.string()) for c in columns})
    log(f"ingest: img2dataset fetched {rows.num_rows} URLs in {time.time() - started:.1f}s: "
        f"{statuses['status'].value_counts().to_pylist()}")
    return statuses


def _finished_download_tars(folder: Path) -> list[str]:
    """img2dataset's tars, each finished: it writes a shard's `_stats.json` once its tar is closed."""
    tars = sorted(folder.glob("*.tar"))
    unfinished = [p.name for p in tars if not (folder / f"{p.stem}_stats.json").exists()]
    if unfinished:  # half written (a shard that failed); reading it would lose or garble its rows
        raise RuntimeError(
            f"ingest: img2dataset left download shard(s) {unfinished} in {folder} unfinished (no _stats.json; "
            "its log above says why); run `loom ingest` again to retry them: finished shards are kept"
        )
    return [str(p) for p in tars]


def _failed_downloads(statuses: pa.Table) -> pa.Table:
    failed = statuses.filter(pa.compute.not_equal(statuses["status"], "success"))
    reasons = [download_drop_reason(s, e) for s, e in
               zip(failed["status"].to_pylist(), failed["error_message"].to_pylist())]
    return pa.table({
        "row_id": failed["row_id"], "source": failed["source"], "url": failed["url"],
        "caption": failed["caption"], "key": failed["key"],
        "stage": pa.array(["download"] * failed.num_rows, pa.string()),
        "reason": pa.array(reasons, pa.string()), "detail": failed["error_message"],
    })


def samples_from_tars(batch: pa.Table) -> pa.Table:
    """img2dataset's webdataset samples (raw bytes) → one row per image with its metadata columns."""
    metas = [json.loads(m) for m in batch["json"].to_pylist()]
    n = len(metas)
    column = lambda name, kind: pa.array([m.get(name) for m in metas], kind)  # noqa: E731
    return pa.table({
        "key": batch["__key__"].cast(pa.string()),
        "download_tar": batch["__url__"].cast(pa.string()),
        "row_id": column("row_id", pa.string()),
        "source": column("source", pa.string()),
        "url": column("url", pa.string()),
        "caption": column("caption", pa.string()),
        "width": column("width", pa.int32()),
        "height": column("height", pa.int32()),
        "original_width": column("original_width", pa.int32()),
        "original_height": column("original_height", pa.int32()),
        "sha256": column("sha256", pa.string()),
        "jpg": batch["jpg"].cast(pa.binary()),
        "drop_reason": pa.array([None] * n, pa.string()),
    })


def _filter_on_ray(ray, tars: list[str], config: filters.FilterConfig) -> pl.DataFrame:
    import ray.data

    ds = ray.data.read_webdataset(tars, decoder=None)  # bytes stay bytes until a filter needs pixels
    ds = ds.map_batches(samples_from_tars, batch_format="pyarrow")
    ds = ds.map_batches(filters.image_geometry, fn_kwargs={"config": config}, batch_format="pyarrow")
    ds = ds.map_batches(filters.LanguageId, fn_constructor_kwargs={"config": config},
                        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2))
    ds = ds.map_batches(filters.caption_quality, fn_kwargs={"config": config}, batch_format="pyarrow")
    ds = ds.map_batches(filters.perceptual_hash, batch_format="pyarrow")
    ds = ds.drop_columns(["jpg"])  # the global steps below need metadata only
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pl.from_arrow(pa.concat_tables(tables)) if tables else _empty_samples()


def _empty_samples() -> pl.DataFrame:
    return pl.DataFrame(schema={
        "key": pl.String, "download_tar": pl.String, "row_id": pl.String, "source": pl.String,
        "url": pl.String, "caption": pl.String, "width": pl.Int32, "height": pl.Int32,
        "original_width": pl.Int32, "original_height": pl.Int32, "sha256": pl.String,
        "drop_reason": pl.String, "lang": pl.String, "lang_confidence": pl.Float32, "phash": pl.String,
    })


def _filter_drops(samples: pl.DataFrame) -> pa.Table:
    detail = pl.when(pl.col("drop_reason") == "language").then(
        pl.lit("detected ") + pl.col("lang") + pl.lit(" (confidence ")
        + pl.col("lang_confidence").round(3).cast(pl.String) + pl.lit(")")
    ).otherwise(None)
    return samples.select(
        "row_id", "source", "url", "caption", "key", pl.lit("filter").alias("stage"),
        pl.col("drop_reason").alias("reason"), detail.alias("detail"),
    ).to_arrow()


def _write_one_shard(out_dir: str, index: int, rows: list[dict]) -> str:
    wanted: dict[str, set[str]] = {}
    for row in rows:
        wanted.setdefault(row["download_tar"], set()).add(row["key"])
    images: dict[str, bytes] = {}
    for tar_path, keys in wanted.items():
        images.update(read_tar_members(tar_path, keys))
    return write_pairs_shard(out_dir, index, rows, images)


def _write_shards(ray, kept: pl.DataFrame, out_dir: Path, per_shard: int, log) -> list[str]:
    rows = kept.to_dicts()
    chunks = [rows[i:i + per_shard] for i in range(0, len(rows), per_shard)]
    write = ray.remote(_write_one_shard)
    paths = ray.get([write.remote(str(out_dir), i, chunk) for i, chunk in enumerate(chunks)])
    log(f"ingest: wrote {len(paths)} pairs shard(s) to {out_dir}")
    return paths


def _check_every_row_once(rows: pa.Table, kept: pl.DataFrame, dropped: pa.Table) -> None:
    seen = kept["row_id"].to_list() + dropped["row_id"].to_pylist()
    if len(seen) != len(set(seen)) or set(seen) != set(rows["row_id"].to_pylist()):
        lost = set(rows["row_id"].to_pylist()) - set(seen)
        raise RuntimeError(
            f"ingest bookkeeping: {rows.num_rows} rows in, {kept.height} kept + {dropped.num_rows} dropped; "
            f"{len(lost)} unaccounted (e.g. {sorted(lost)[:5]}). This is a Loom bug: please report it."
        )
