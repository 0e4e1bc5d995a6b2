"""Loom's own pairs shards (the ingest output) as captioning records.

An ingest output holds `shards/pairs-NNNNN.tar`, each with its parquet index beside it
(`pairs-NNNNN.parquet`, one row per kept pair). The index is all a record needs: the image is
referenced by its shard and key, never opened here. Big outputs are read a slice at a time
(`read_shard_index`), so nothing has to hold every pair at once.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.adapters import AnnotationError
from catalog.records import canonical_record

# the index columns a record is made of (the rest: hashes, original sizes, row ids, stay on disk)
RECORD_COLUMNS = ("key", "source", "url", "caption", "lang", "width", "height")


def shard_indexes(ingest_dir: str | Path) -> list[Path]:
    """The parquet index of every pairs shard of an ingest output, in shard order."""
    shards_dir = Path(ingest_dir) / "shards"
    indexes = sorted(shards_dir.glob("pairs-*.parquet"))
    if not indexes:
        raise FileNotFoundError(f"{shards_dir}: no pairs shards; run `loom ingest` first")
    return indexes


def index_rows(index_path: str | Path) -> int:
    """How many pairs a shard index holds, from its parquet footer (no row is read)."""
    try:
        return pq.ParquetFile(index_path).metadata.num_rows
    except (OSError, pa.ArrowException) as err:
        raise AnnotationError(_unreadable(index_path, err)) from err


def read_shard_index(index_path: str | Path, start: int = 0, stop: int | None = None) -> pa.Table:
    """Rows [start, stop) of one shard index, with the `shard` (its tar's absolute path) they live in."""
    try:
        table = pq.read_table(index_path, columns=list(RECORD_COLUMNS))
    except (OSError, pa.ArrowException) as err:
        raise AnnotationError(_unreadable(index_path, err)) from err
    table = table.slice(start, (table.num_rows if stop is None else stop) - start)
    shard = str(Path(index_path).with_suffix(".tar").resolve())
    return table.append_column("shard", pa.array([shard] * table.num_rows, pa.string()))


def _unreadable(index_path, err: Exception) -> str:
    return (f"pairs shard index {index_path}: unreadable ({type(err).__name__}: {err}); the ingest output is "
            "damaged: re-run `loom ingest` into a fresh folder, or remove this shard and its .tar")


def pairs_records(index: pa.Table, split: str = "train") -> list[dict]:
    """One captioning record per row of a shard index (as `read_shard_index` gives it)."""
    columns = {name: index.column(name).to_pylist() for name in (*RECORD_COLUMNS, "shard")}
    # the id is the pair's key alone, unique across the ingest output whatever its source
    return [canonical_record("captioning", id=f"pairs:{key}", dataset=f"pairs/{source}", split=split, lang=lang,
                             image={"shard": shard, "key": key, "url": url, "width": width, "height": height},
                             caption=caption)
            for key, source, url, caption, lang, width, height, shard in zip(*columns.values())]


def read_pairs(ingest_dir: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """One captioning record per kept pair (the first `limit` of them), its image referenced by shard and key.
    Every record at once: a render of a big output reads it in slices instead."""
    records: list[dict] = []
    for index_path in shard_indexes(ingest_dir):
        if limit is not None and len(records) >= limit:
            break
        wanted = None if limit is None else min(limit - len(records), index_rows(index_path))
        records += pairs_records(read_shard_index(index_path, 0, wanted), split)
    return records
