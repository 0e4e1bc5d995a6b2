"""Which instruction records a packed output takes, how many times each, and in which windows.

The plan is made from the render output's parquet footers and its two narrow columns (`dataset`,
`split`), one row group at a time, so it holds counts per row group and never a row; a window is a run
of consecutive selected records, given as row groups with how many selected records to skip and take
in each, and the window reads its own records back. Whether a record is selected and how many copies
of it an output draws depend on the record alone (a hash of the output's name and the record's id), so
the result does not depend on how records are cut into windows, nor on where a window runs.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# what packing reads of an instruction record (the instructions contract's other columns are for scoring)
RECORD_COLUMNS = ("id", "dataset", "task", "split", "images", "messages")
BATCH_ROWS = 8192  # records decoded at a time: a huge row group is streamed, never held whole
COUNT_BATCH_ROWS = 65_536  # rows of the two narrow columns the plan counts, decoded at a time


@dataclass(frozen=True)
class Selection:
    """An output's records: of `split`, and of a dataset named by one of the prefixes ('pairs' takes 'pairs/cc3m')."""

    datasets: tuple[str, ...]
    split: str = "train"

    def mask(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """(rows,) bool: which rows of a batch holding `dataset` and `split` are selected."""
        dataset = batch.column("dataset")
        keep = pc.equal(batch.column("split"), self.split)
        keep = pc.and_(keep, _any(pc.starts_with(dataset, pattern=prefix) for prefix in self.datasets))
        return np.asarray(keep.fill_null(False), dtype=bool)

    def prefix(self, dataset: str) -> str:
        """The prefix a selected record is counted under (the first that names its dataset)."""
        return next(p for p in self.datasets if dataset.startswith(p))


def _any(masks: Iterable[pa.Array]) -> pa.Array:
    result = None
    for mask in masks:
        result = mask if result is None else pc.or_(result, mask)
    return result


@dataclass(frozen=True)
class Piece:
    """Selected records of one row group of one instructions file: skip `skip` of them, take the next `take`."""

    path: str
    row_group: int
    skip: int
    take: int


@dataclass(frozen=True)
class Window:
    """Up to `pack.window` consecutive selected records of one output: what one pack task reads and packs."""

    output: str
    index: int  # 0-based; the shards are packed-<index>-<n>.parquet
    count: int  # windows of the output
    records: int
    pieces: tuple[Piece, ...]


def count_selected(path: str | Path, selections: dict[str, Selection]) -> dict:
    """Per row group of one instructions file: its rows, the rows each output selects, the rows any output
    selects; and the (dataset, split) pairs the file holds, to name them when a selection finds nothing.
    Reads the `dataset` and `split` columns only, a batch at a time."""
    file = pq.ParquetFile(path)
    rows, selected, anyone, pairs = [], {name: [] for name in selections}, [], set()
    for row_group in range(file.num_row_groups):
        counts, picked = dict.fromkeys(selections, 0), 0
        for batch in file.iter_batches(batch_size=COUNT_BATCH_ROWS, row_groups=[row_group],
                                       columns=["dataset", "split"]):
            masks = {name: selection.mask(batch) for name, selection in selections.items()}
            for name, mask in masks.items():
                counts[name] += int(mask.sum())
            picked += int(np.logical_or.reduce(list(masks.values())).sum()) if masks else 0
            distinct = pa.Table.from_batches([batch]).group_by(["dataset", "split"]).aggregate([])
            pairs.update(zip(distinct.column("dataset").to_pylist(), distinct.column("split").to_pylist()))
        rows.append(file.metadata.row_group(row_group).num_rows)
        for name in selections:
            selected[name].append(counts[name])
        anyone.append(picked)
    return {"path": str(path), "rows": rows, "selected": selected, "any": anyone, "pairs": pairs}


def records_per_window(window: int, weights: dict[str, float]) -> int:
    """Selected records per window, so that a window packs at most `window` samples once weights repeat them."""
    most_copies = max(1, math.ceil(max(weights.values(), default=1)))
    return max(1, window // most_copies)


def plan_windows(output: str, counts: Iterable[tuple[str, int, int]], per_window: int) -> list[Window]:
    """Cut an output's selected records, in corpus order, into windows of `per_window` records.

    `counts` is (path, row group, selected records) in corpus order; the plan holds one piece per row group
    a window touches, never a row."""
    windows: list[list[Piece]] = [[]]
    room = per_window
    for path, row_group, selected in counts:
        skip = 0
        while selected - skip > 0:
            if room == 0:
                windows.append([])
                room = per_window
            take = min(room, selected - skip)
            windows[-1].append(Piece(str(path), int(row_group), skip, take))
            skip, room = skip + take, room - take
    filled = [pieces for pieces in windows if pieces]
    return [Window(output, k, len(filled), sum(p.take for p in pieces), tuple(pieces)) for k, pieces in enumerate(filled)]


def read_window(window: Window, selection: Selection) -> list[dict]:
    """The window's records, in corpus order, as dicts of RECORD_COLUMNS: read from its files here, by
    whoever packs the window, a batch at a time."""
    records: list[dict] = []
    for piece in window.pieces:
        file = pq.ParquetFile(piece.path)
        seen, stop = 0, piece.skip + piece.take  # selected records of the row group met so far; where to stop
        for batch in file.iter_batches(batch_size=BATCH_ROWS, row_groups=[piece.row_group], columns=list(RECORD_COLUMNS)):
            chosen = batch.filter(pa.array(selection.mask(batch)))
            first, last = max(piece.skip - seen, 0), min(stop - seen, chosen.num_rows)
            if first < last:
                records.extend(chosen.slice(first, last - first).to_pylist())
            seen += chosen.num_rows
            if seen >= stop:
                break
        if seen < stop:
            raise ValueError(f"{piece.path}, row group {piece.row_group}: {seen} records of split {selection.split!r} "
                             f"in {list(selection.datasets)}, fewer than the {stop} planned; the render output "
                             "changed while packing, run `loom pack` again")
    return records


def record_hash(*parts: str) -> float:
    """A number in [0, 1) that depends on the parts alone: the same on every machine, in every window."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def copies(weight: float, output: str, record_id: str) -> int:
    """How many times an output draws a record of weight `weight`: its whole part every time, and one more
    when the record's hash (with the output's name) falls below the fraction."""
    whole = int(weight)
    fraction = weight - whole
    return whole + int(bool(fraction) and record_hash(output, record_id) < fraction)


def weigh(records: list[dict], selection: Selection, weights: dict[str, float], output: str
          ) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """An output's mixture over some of its records: each record of a weighed dataset prefix drawn `w` times on
    average (decided per record, see `copies`), the rest once. Returns the draw and, per prefix, how many
    records it had and how many samples it gave."""
    drawn: list[dict] = []
    mixture = {prefix: {"records": 0, "samples": 0} for prefix in selection.datasets}
    for record in records:
        prefix = selection.prefix(record["dataset"])
        n = copies(weights.get(prefix, 1), output, record["id"])
        drawn += [record] * n
        mixture[prefix]["records"] += 1
        mixture[prefix]["samples"] += n
    return drawn, mixture


def render_files(render_dir: str | Path, manifest: dict) -> list[str]:
    """The instructions files of a finished render stage, in its manifest's order, each checked against the
    manifest before any work: present, a readable parquet footer, and the rows the manifest counts.
    A missing, truncated or foreign file raises ValueError naming it."""
    paths = [str(Path(render_dir) / f) for f in manifest["files"]]
    rows = 0
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"{path}: listed in {Path(render_dir) / 'manifest.json'} but missing; "
                             "re-run `loom render` for this output folder")
        try:
            metadata = pq.read_metadata(path)
        except (OSError, pa.ArrowException) as err:
            raise ValueError(f"{path}: not a readable parquet file ({err}); it was damaged after render wrote it: "
                             "re-run `loom render` for this output folder") from err
        missing = {"id", "dataset", "split", "messages"} - set(metadata.schema.to_arrow_schema().names)
        if missing:
            raise ValueError(f"{path}: not an instructions file (no {sorted(missing)} column); re-run `loom render`")
        rows += metadata.num_rows
    if manifest.get("rows_out") and rows != manifest["rows_out"]:
        raise ValueError(f"{render_dir}: its files hold {rows} records, its manifest {manifest['rows_out']}; the folder "
                         "changed after render finished: re-run `loom render`")
    return paths


def selected_counts(file_counts: list[dict], output: str) -> Iterator[tuple[str, int, int]]:
    """(path, row group, selected records) of one output over the files' counts, in corpus order."""
    for counts in file_counts:
        for row_group, selected in enumerate(counts["selected"][output]):
            yield counts["path"], row_group, selected
