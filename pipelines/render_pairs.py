"""A pairs entry rendered in parts: the plan (slices of shard indexes, from the ingest manifest) and one part's render.

At 10^8-10^9 pairs no process may hold every record. The plan is made from the ingest manifest's list
of shards with their rows and bytes (for outputs without it, from the shard indexes' footers); each part,
`part_records` consecutive pairs in shard order (it may span shard boundaries), is then read, rendered
and written by a task of its own. Parts are cut from the
stream of pairs exactly as one list of every record would be cut, so their names and contents do not
depend on where they ran, nor on how many ran at once.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from catalog.adapters import AnnotationError
from catalog.adapters.pairs import index_rows, pairs_records, read_shard_index, shard_indexes
from pipelines.render import collector_paused, render_part, written_part_summary
from templates.brevity import BrevityDraw
from templates.library import use_template_folders

# (shard index path, first row, the row after the last): consecutive pairs of one shard
Slice = tuple[str, int, int]

# footers read at once: on a network filesystem each one is a round trip
FOOTER_READERS = 16


def shard_rows(ingest_dir: str | Path) -> list[tuple[str, int]]:
    """Every shard index of an ingest output, in shard order, with its row count.

    An ingest manifest that lists each shard's rows and tar bytes (`shard_rows`, `shard_bytes`) is the
    plan: every shard it lists is checked to be there whole (its index, its tar of the bytes listed) and
    nothing else is read. Older outputs are planned from their indexes' footers."""
    manifest_path = Path(ingest_dir) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if "shard_rows" not in manifest:
        indexes = shard_indexes(ingest_dir)
        with ThreadPoolExecutor(min(FOOTER_READERS, len(indexes))) as pool:
            counts = list(pool.map(index_rows, indexes))
        return [(str(path), rows) for path, rows in zip(indexes, counts)]
    planned = []
    for tar, rows, size in zip(manifest["shards"], manifest["shard_rows"], manifest["shard_bytes"]):
        tar_path = Path(ingest_dir) / tar
        index_path = tar_path.with_suffix(".parquet")
        found = tar_path.stat().st_size if tar_path.is_file() else None
        if found != size or not index_path.is_file():
            what = ("missing" if found is None else f"{found} bytes, {size} when ingest wrote it") if found != size \
                else f"its index {index_path.name} is missing"
            raise AnnotationError(f"pairs shard {tar_path}: {what}; the ingest output changed after it finished: "
                                  "re-run `loom ingest` into a fresh folder")
        planned.append((str(index_path), rows))
    return planned


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


def part_starts(plan: list[list[Slice]]) -> list[int]:
    """The position, in the entry's stream of pairs, of each part's first pair."""
    starts, position = [], 0
    for part in plan:
        starts.append(position)
        position += part_rows(part)
    return starts


def read_part(part: list[Slice], split: str) -> list[dict]:
    """The captioning records of one part's pairs, in shard order."""
    records: list[dict] = []
    with collector_paused():
        for index_path, start, stop in part:
            records += pairs_records(read_shard_index(index_path, start, stop), split)
    return records


def render_pairs_part(part: list[Slice], split: str, seed: int, template: str | None, path: str,
                      brevity: BrevityDraw | None = None, first: int = 0, template_paths: tuple = ()) -> dict:
    """Ray task (or a plain call): one part's pairs read from their shard indexes, rendered through the
    templates (Loom's and those of `template_paths`) and written to `path`; what the file holds
    (`part_summary`), whether it was `kept`, and the seconds spent reading and rendering. The part's
    pairs are the entry's from position `first` on, which with `brevity` says which ask for a short
    caption. A file already at `path` was written whole (atomically) by an earlier run of this config on
    these inputs (the job clears the folder otherwise): it is kept and counted, not rendered again."""
    use_template_folders(template_paths)
    started = time.perf_counter()
    if Path(path).exists():
        summary = written_part_summary(path)
        return {**summary, "kept": True, "seconds": {"read": time.perf_counter() - started, "render_and_write": 0.0}}
    records = read_part(part, split)
    read_seconds = time.perf_counter() - started
    summary = render_part(records, seed, template, path, brevity, first)
    return {**summary, "kept": False,
            "seconds": {"read": read_seconds, "render_and_write": time.perf_counter() - started - read_seconds}}
