"""The rows of an ingest run between its steps: every input row with what happened to it.

A download shard's rows are kept in `_work/samples/<shard>.parquet` (SAMPLES_SCHEMA) once the
per-shard steps (screen, download, filter) are done; every row carries `drop_reason` (null
while kept) and `stage` (where it was dropped). The whole-run decisions (dedup, mix) add their
reasons at finalize, which splits each shard into its kept rows and its dropped rows
(DROPPED_SCHEMA, one parquet part per download shard).
"""
from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

# what img2dataset reports of each row it was given
FETCH_COLUMNS = ("key", "status", "error_message", "width", "height", "original_width", "original_height",
                 "sha256", "download_tar", "jpg_offset", "jpg_size")
# what the whole-run decisions (dedup, mix) read of each row still kept after the per-shard steps
DECISION_COLUMNS = ["shard", "key", "source", "lang", "sha256", "phash"]
SAMPLES_SCHEMA = pa.schema(
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


def stamp(batch: pa.Table, stage: str) -> pa.Table:
    """Name `stage` as where each row dropped since the last stamp was dropped."""
    fresh = pc.and_(pc.is_valid(batch["drop_reason"]), pc.is_null(batch["stage"]))
    return batch.set_column(batch.schema.get_field_index("stage"), "stage",
                            pc.if_else(fresh, pa.scalar(stage), batch["stage"]))


def dropped_rows(samples: pl.DataFrame) -> pa.Table:
    """The dropped rows of a shard as the dropped output holds them, each with a human-readable detail."""
    detail = (
        pl.when(pl.col("drop_reason") == "language")
        .then(pl.lit("detected ") + pl.col("lang") + pl.lit(" (confidence ")
              + pl.col("lang_confidence").round(3).cast(pl.String) + pl.lit(")"))
        .when(pl.col("stage") == "download").then(pl.col("error_message"))
        .otherwise(None)
    )
    return samples.filter(pl.col("drop_reason").is_not_null()).select(
        "row_id", "source", "url", "caption", "key", "stage", pl.col("drop_reason").alias("reason"),
        detail.alias("detail"),
    ).to_arrow().cast(DROPPED_SCHEMA)


def counted_reason(reason: str) -> str:
    """The reason a drop is counted under: `duplicate_of KEY` counts as `duplicate`."""
    return "duplicate" if reason.startswith("duplicate_of ") else reason


def failed_shard_rows(inputs: pa.Table, shard: int, error: str) -> pa.Table:
    """A download shard that failed every attempt (its worker killed, a native crash): every input row
    dropped as `shard_failed`, with the last error, so the run finishes and nothing is silently lost."""
    n = inputs.num_rows
    columns = {name: pa.nulls(n, field.type) for name, field in zip(SAMPLES_SCHEMA.names, SAMPLES_SCHEMA)}
    for name in ("row_id", "source", "url", "caption", "lang"):
        if name in inputs.column_names:
            columns[name] = inputs[name].cast(SAMPLES_SCHEMA.field(name).type)
    columns["shard"] = pa.array([shard] * n, pa.int64())
    columns["status"] = pa.array(["shard_failed"] * n, pa.string())
    columns["error_message"] = pa.array([error] * n, pa.string())
    columns["stage"] = pa.array(["download"] * n, pa.string())
    columns["drop_reason"] = pa.array(["shard_failed"] * n, pa.string())
    return pa.table(columns, schema=SAMPLES_SCHEMA)
