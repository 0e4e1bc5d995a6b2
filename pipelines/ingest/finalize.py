"""Finalize: each download shard's rows split into kept and dropped by every decision, then the pairs shards.

Per group of download shards (a Ray task each), every shard's rows (`_work/samples`) get the
dedup decisions about them and the language cut; the shard's kept rows go to `_work/kept`
and its dropped rows to `dropped/part-<shard>.parquet` (DROPPED_SCHEMA: one dataset that
pyarrow, polars, Hugging Face datasets and Ray Data read as one table). Each shard checks
rows in = kept + dropped and returns counts and histograms; the driver adds them up.
The pairs shards are then cut from the kept rows, `samples_per_shard` each, in key order.
"""
from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipelines.ingest import quota
from pipelines.ingest.decide import DecisionPlan, Decisions
from pipelines.ingest.download import shard_stem
from pipelines.ingest.figures import add_figures, kept_figures
from pipelines.ingest.samples import SAMPLES_SCHEMA, counted_reason, dropped_rows
from pipelines.ingest.shards import read_tar_spans, write_pairs_shard
from pipelines.manifest import write_json_atomic, write_parquet_atomic

DROPPED_DIR = "dropped"


def dropped_part(stage_dir: str | Path, shard: int) -> Path:
    return Path(stage_dir) / DROPPED_DIR / f"part-{shard_stem(shard)}.parquet"


def kept_path(work: str | Path, shard: int) -> Path:
    return Path(work) / "kept" / f"{shard_stem(shard)}.parquet"


def decided_rows(rows: pl.DataFrame, duplicates: pl.DataFrame, key_digits: int, cuts: dict[str, str],
                 seed: int, shard: int) -> pl.DataFrame:
    """A shard's rows with the whole-run decisions applied: `duplicate_of KEY` (stage dedup) for the rows
    the dedup decisions name, then `mix_downsampled` (stage mix) for the rows beyond their language's cut."""
    named = duplicates.select(pl.col("key").cast(pl.Int64).alias("key_int"),
                              pl.format("duplicate_of {}", pl.col("keeper").cast(pl.String).str.zfill(key_digits))
                              .alias("decided"))
    joined = (rows.with_columns(pl.col("key").cast(pl.Int64, strict=False).alias("key_int"))
              .join(named, on="key_int", how="left", maintain_order="left"))
    if joined.height != rows.height or joined.filter(pl.col("decided").is_not_null()
                                                     & pl.col("drop_reason").is_not_null()).height:
        raise RuntimeError(f"ingest bookkeeping: shard {shard}: a dedup decision names a key twice or a row already "
                           "dropped. This is a Loom bug: please report it.")
    if joined["decided"].is_not_null().sum() != duplicates.height:
        raise RuntimeError(f"ingest bookkeeping: shard {shard}: a dedup decision names a key the shard does not hold. "
                           "This is a Loom bug: please report it.")
    joined = joined.with_columns(
        pl.coalesce("drop_reason", "decided").alias("drop_reason"),
        pl.when(pl.col("decided").is_not_null()).then(pl.lit("dedup")).otherwise(pl.col("stage")).alias("stage"),
    ).drop("decided", "key_int")
    still = joined["drop_reason"].is_null().to_numpy()
    keys = joined["key"].to_list()
    langs = joined["lang"].to_list()
    picked = [k for k in range(joined.height) if still[k]]
    survive = quota.kept_by_mix(seed, [keys[k] for k in picked], [langs[k] for k in picked], cuts)
    mixed_out = [False] * joined.height
    for k, ok in zip(picked, survive.tolist()):
        mixed_out[k] = not ok
    out = pl.Series("mixed_out", mixed_out, pl.Boolean)
    return joined.with_columns(
        pl.when(out).then(pl.lit("mix_downsampled")).otherwise(pl.col("drop_reason")).alias("drop_reason"),
        pl.when(out).then(pl.lit("mix")).otherwise(pl.col("stage")).alias("stage"),
    )


def finalize_group(work: str, stage_dir: str, plan: DecisionPlan, group: int, key_digits: int,
                   cuts: dict[str, str]) -> dict:
    """Ray task: every shard of one group split into its kept rows and its dropped part; per-shard counts."""
    decisions = Decisions(work)
    done = decisions.done("finalize", group)
    if done.exists():
        return json.loads(done.read_text())
    duplicates = pl.from_arrow(decisions.group_decisions(plan, group))
    summary = empty_counts()
    for shard in plan.shards_of(group):
        rows = pl.from_arrow(pq.read_table(Path(work) / "samples" / f"{shard_stem(shard)}.parquet"))
        if rows["row_id"].n_unique() != rows.height:
            raise RuntimeError(f"ingest bookkeeping: shard {shard} repeats a row. This is a Loom bug: please report it.")
        decided = decided_rows(rows, duplicates.filter(pl.col("shard") == shard), key_digits, cuts, plan.seed, shard)
        kept = decided.filter(pl.col("drop_reason").is_null()).sort("key")
        dropped = dropped_rows(decided)
        if kept.height + dropped.num_rows != rows.height:
            raise RuntimeError(f"ingest bookkeeping: shard {shard}: {rows.height} rows in, {kept.height} kept + "
                               f"{dropped.num_rows} dropped. This is a Loom bug: please report it.")
        write_parquet_atomic(kept.to_arrow().select(SAMPLES_SCHEMA.names).cast(SAMPLES_SCHEMA), kept_path(work, shard))
        write_parquet_atomic(dropped, dropped_part(stage_dir, shard))
        add_counts(summary, {
            "rows": rows.height, "kept": kept.height,
            "dropped": collections.Counter(counted_reason(r) for r in dropped["reason"].to_pylist()),
            "dropped_by_stage": collections.Counter(dropped["stage"].to_pylist()),
            "kept_by_source": collections.Counter(kept["source"].to_list()),
            "figures": kept_figures(kept),
            "kept_per_shard": [[shard, kept.height]],
            "download": [stats] if (stats := _download_stats(work, shard)) else [],
        })
    write_json_atomic(done, summary)
    return summary


def _download_stats(work: str, shard: int) -> dict | None:
    """img2dataset's stats of the shard's download (none for a shard that failed every attempt)."""
    from pipelines.ingest.download import finished_stats

    return finished_stats(Path(work) / "download", shard)


def empty_counts() -> dict:
    return {"rows": 0, "kept": 0, "dropped": {}, "dropped_by_stage": {}, "kept_by_source": {}, "figures": {},
            "kept_per_shard": [], "download": []}


def add_counts(total: dict, part: dict) -> dict:
    """A shard's (or a group's) counts added into `total`: sums, histograms, and the per-shard lists."""
    total["rows"] += part["rows"]
    total["kept"] += part["kept"]
    for name in ("dropped", "dropped_by_stage", "kept_by_source"):
        for label, count in part[name].items():
            total[name][label] = total[name].get(label, 0) + count
    if part["figures"]:
        add_figures(total["figures"], part["figures"])
    total["kept_per_shard"].extend(part["kept_per_shard"])
    total["download"].extend(part["download"])
    return total


def plan_pieces(kept_per_shard: list[list[int]], per_shard: int) -> Iterator[list[tuple[int, int, int]]]:
    """Pairs shards of `per_shard` kept rows in key order (download shard, then key): each a list of
    (download shard, first, end) slices of those shards' kept rows, generated one pairs shard at a time."""
    piece: list[tuple[int, int, int]] = []
    room = per_shard
    for shard, kept in sorted(kept_per_shard):
        first = 0
        while first < kept:
            if room == 0:
                yield piece
                piece, room = [], per_shard
            end = min(kept, first + room)
            piece.append((shard, first, end))
            room -= end - first
            first = end
    if piece:
        yield piece


def write_pairs_piece(out_dir: str, index: int, work: str, pieces: list[tuple[int, int, int]]) -> dict:
    """Ray task: pairs shard `index` from (download shard, first, end) slices of each shard's kept rows; its
    tar's path, rows and bytes (the manifest lists them, so the next stage can check what it reads)."""
    rows: list[dict] = []
    for shard, first, end in pieces:
        rows.extend(pq.read_table(kept_path(work, shard)).slice(first, end - first).to_pylist())
    wanted: dict[str, dict[str, tuple[int, int]]] = {}
    for row in rows:
        wanted.setdefault(row["download_tar"], {})[row["key"]] = (row["jpg_offset"], row["jpg_size"])
    images: dict[str, bytes] = {}
    for tar_path, spans in wanted.items():
        images.update(read_tar_spans(tar_path, spans))
    tar = write_pairs_shard(out_dir, index, rows, images)
    return {"path": tar, "rows": len(rows), "bytes": Path(tar).stat().st_size}


def finalize_run(ray, work: str | Path, stage_dir: str | Path, decided: dict, samples_per_shard: int,
                 log=print) -> tuple[dict, list[dict]]:
    """Finalize every group (Ray tasks), then write the pairs shards from the kept rows; the counts added
    up and each pairs shard's tar (path, rows, bytes). The driver holds per-group counts and per-shard ones."""
    from pipelines.ray_tasks import progress, run_bounded

    plan = decided["plan"]
    task = ray.remote(max_retries=3)(finalize_group)
    totals = empty_counts()
    tick = progress(log, "ingest: finalize", plan.groups)
    arguments = ((str(work), str(stage_dir), plan, g, decided["key_digits"], decided["cuts"]) for g in range(plan.groups))
    for _, summary in run_bounded(ray, task, arguments):
        add_counts(totals, summary)
        tick()
    write = ray.remote(max_retries=3)(write_pairs_piece)
    arguments = ((str(Path(stage_dir) / "shards"), i, str(work), piece)
                 for i, piece in enumerate(plan_pieces(totals["kept_per_shard"], samples_per_shard)))
    written = sorted((shard for _, shard in run_bounded(ray, write, arguments)), key=lambda shard: shard["path"])
    log(f"ingest: wrote {len(written)} pairs shard(s) to {Path(stage_dir) / 'shards'}")
    return totals, written
