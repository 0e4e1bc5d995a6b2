"""A pairs entry rendered in parts: the plan (slices of shard indexes, from parquet footers) and one part's render.

At 10^8-10^9 pairs no process may hold every record. The plan is made from the shard indexes' footers
alone (file names and row counts); each part, `part_records` consecutive pairs in shard order (it may
span shard boundaries), is then read, rendered and written by a task of its own. Parts are cut from the
stream of pairs exactly as one list of every record would be cut, so their names and contents do not
depend on where they ran, nor on how many ran at once.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from catalog.adapters.pairs import index_rows, pairs_records, read_shard_index, shard_indexes
from pipelines.render import collector_paused, render_part, written_part_summary

# (shard index path, first row, the row after the last): consecutive pairs of one shard
Slice = tuple[str, int, int]

# footers read at once: on a network filesystem each one is a round trip
FOOTER_READERS = 16


def shard_rows(ingest_dir: str | Path) -> list[tuple[str, int]]:
    """Every shard index of an ingest output, in shard order, with its row count (read from its footer)."""
    indexes = shard_indexes(ingest_dir)
    with ThreadPoolExecutor(min(FOOTER_READERS, len(indexes))) as pool:
        counts = list(pool.map(index_rows, indexes))
    return [(str(path), rows) for path, rows in zip(indexes, counts)]


def plan_parts(shards: list[tuple[str, int]], part_records: int, limit: int | None = None) -> list[list[Slice]]:
    """The first `limit` pairs (every pair when None) of `shards` (index path, rows), cut into parts of
    `part_records` in shard order, the last one shorter. No pairs at all is one empty part: its file is
    still written, and says so."""
    remaining = sum(rows for _, rows in shards) if limit is None else limit
    parts: list[list[Slice]] = []
    part: list[Slice] = []
    room = part_records
    for path, rows in shards:
        start = 0
        while start < rows and remaining:
            take = min(rows - start, room, remaining)
            part.append((path, start, start + take))
            start, room, remaining = start + take, room - take, remaining - take
            if room == 0:
                parts.append(part)
                part, room = [], part_records
        if not remaining:
            break
    if part or not parts:
        parts.append(part)
    return parts


def part_rows(part: list[Slice]) -> int:
    return sum(stop - start for _, start, stop in part)


def read_part(part: list[Slice], split: str) -> list[dict]:
    """The captioning records of one part's pairs, in shard order."""
    records: list[dict] = []
    with collector_paused():
        for index_path, start, stop in part:
            records += pairs_records(read_shard_index(index_path, start, stop), split)
    return records


def render_pairs_part(part: list[Slice], split: str, seed: int, template: str | None, path: str) -> dict:
    """Ray task (or a plain call): one part's pairs read from their shard indexes, rendered through the
    templates and written to `path`; what the file holds (`part_summary`), whether it was `kept`, and the
    seconds spent reading and rendering. A file already at `path` was written whole (atomically) by an
    earlier run of this config on these inputs (the job clears the folder otherwise): it is kept and
    counted, not rendered again."""
    started = time.perf_counter()
    if Path(path).exists():
        summary = written_part_summary(path)
        return {**summary, "kept": True, "seconds": {"read": time.perf_counter() - started, "render_and_write": 0.0}}
    records = read_part(part, split)
    read_seconds = time.perf_counter() - started
    summary = render_part(records, seed, template, path)
    return {**summary, "kept": False,
            "seconds": {"read": read_seconds, "render_and_write": time.perf_counter() - started - read_seconds}}
