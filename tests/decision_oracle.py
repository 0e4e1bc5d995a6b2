"""Today's global decisions (one process, every row: dedup.mark_duplicates then mix.apply_mix) recomputed
from an ingest output's per-shard rows, to hold the distributed decisions against, row for row."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipelines.ingest.dedup import mark_duplicates
from pipelines.ingest.mix import apply_mix, normalise_ratios


def oracle_decisions(stage_dir: Path, ratios: dict, seed: int, radius: int = 16) -> dict[str, str | None]:
    """key -> the reason the global algorithm gives each row that reached the decisions (None: kept)."""
    samples = pl.concat([pl.read_parquet(p) for p in sorted((Path(stage_dir) / "_work" / "samples").glob("*.parquet"))])
    reached = samples.filter(pl.col("drop_reason").is_null()).select(
        "shard", "key", "source", "lang", pl.col("sha256").str.decode("hex"), pl.col("phash").str.decode("hex"),
        drop_reason=pl.lit(None, pl.String))
    decided, _ = apply_mix(mark_duplicates(reached, radius), normalise_ratios(ratios), seed)
    return dict(decided.select("key", "drop_reason").iter_rows())


def distributed_decisions(stage_dir: Path) -> dict[str, str | None]:
    """key -> the reason the run gave each row that reached the decisions: dropped at dedup or mix, or kept."""
    stage_dir = Path(stage_dir)
    dropped = pq.read_table(stage_dir / "dropped", columns=["key", "stage", "reason"]).to_pylist()
    out = {r["key"]: r["reason"] for r in dropped if r["stage"] in ("dedup", "mix")}
    for path in sorted((stage_dir / "_work" / "kept").glob("*.parquet")):
        out.update(dict.fromkeys(pq.read_table(path, columns=["key"])["key"].to_pylist()))
    return out
