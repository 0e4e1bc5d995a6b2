"""Hash partitions and the files that carry rows between the decision phase's tasks.

A map task writes one Arrow IPC file with a record batch per partition (batch p holds the
rows of partition p, possibly none); the reducer of partition p opens every map task's file
and reads only batch p, memory-mapped. So no process ever holds more than one partition of
one phase, and a finished file is a checkpoint: a task whose file exists is not run again.
"""
from __future__ import annotations

import os
import numpy as np
import pyarrow as pa

from pipelines.manifest import atomic_path

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 values spread uniformly, so ranges of the result balance partitions
    even where the input is not uniform (perceptual hashes agree on their low-frequency bits)."""
    x = values.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def range_partition(uniform: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each uniform uint64 value: its top 32 bits scaled to [0, partitions)."""
    return ((uniform >> np.uint64(32)) * np.uint64(partitions) >> np.uint64(32)).astype(np.int32)


def digest_prefix(digests: pa.Array) -> np.ndarray:
    """The first 8 bytes of each 32-byte digest (sha256, phash), big-endian, as uint64."""
    data = _fixed_bytes(digests, 32)
    return data[:, :8].copy().view(">u8").ravel().astype(np.uint64)


def digest_words(digests: pa.Array) -> np.ndarray:
    """256-bit hashes as 4 uint64 words each, shape (4, n), word 0 holding the most significant bits."""
    data = _fixed_bytes(digests, 32)
    return data.copy().view(">u8").reshape(-1, 4).astype(np.uint64).T.copy()


def _fixed_bytes(digests: pa.Array, size: int) -> np.ndarray:
    digests = digests.combine_chunks() if isinstance(digests, pa.ChunkedArray) else digests
    if len(digests) == 0:
        return np.zeros((0, size), np.uint8)
    fixed = digests.cast(pa.binary(size))
    buffer = fixed.buffers()[1]
    return np.frombuffer(buffer, np.uint8, count=(fixed.offset + len(fixed)) * size).reshape(-1, size)[fixed.offset:]


def write_partitioned(table: pa.Table, partition: np.ndarray, partitions: int, path: str | os.PathLike) -> list[int]:
    """`table` split by `partition` (an int per row, in [0, partitions)) into one IPC file, batch p = rows of
    partition p in their order in `table`; written atomically. Returns the rows in each partition."""
    # a stable sort of small integers is a radix sort in numpy: linear, several times faster than int32's
    order = np.argsort(partition.astype(np.int16 if partitions <= np.iinfo(np.int16).max else np.int32), kind="stable")
    counts = np.bincount(partition, minlength=partitions)
    ordered = table.take(pa.array(order)) if len(order) else table
    starts = np.concatenate(([0], np.cumsum(counts)))
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        for p in range(partitions):
            piece = ordered.slice(int(starts[p]), int(counts[p]))
            writer.write_batch(piece.combine_chunks().to_batches()[0] if piece.num_rows
                               else pa.RecordBatch.from_pylist([], schema=table.schema))
    return counts.tolist()


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """One table as an IPC file (a single partition), written atomically."""
    write_partitioned(table, np.zeros(table.num_rows, np.int32), 1, path)


def read_partition(paths: list[str | os.PathLike], partition: int, schema: pa.Schema) -> pa.Table:
    """Batch `partition` of every file in `paths`, concatenated in the order of `paths`."""
    batches = []
    for path in paths:
        with pa.OSFile(str(path)) as source:  # reads the one batch asked for, not the file
            reader = pa.ipc.open_file(source)
            if partition >= reader.num_record_batches:
                raise ValueError(f"{path}: {reader.num_record_batches} partition(s), asked for partition {partition}; "
                                 "the decision phase's plan changed under it: delete the run's _work/decide and re-run")
            batch = reader.get_batch(partition)
            if batch.num_rows:
                batches.append(pa.Table.from_batches([batch]).select(schema.names).cast(schema))
    return pa.concat_tables(batches) if batches else schema.empty_table()


def read_whole(path: str | os.PathLike) -> pa.Table:
    """Every batch of one IPC file, as one table."""
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).read_all()
