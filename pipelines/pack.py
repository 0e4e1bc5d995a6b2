"""Packing tokenized samples into fixed-length sequences without cross-contamination."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.render import IMAGE_REF

PACKED_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("segment_lengths", pa.list_(pa.int32())),
    ("images", pa.list_(IMAGE_REF)),
    ("task", pa.list_(pa.string())),
    ("ids", pa.list_(pa.string())),
])


def assign_bins(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """The sequence index of every sample, by best-fit decreasing; deterministic.

    Lengths are integers in [1, seq_len], so the bins with a given free space are kept in
    one array of per-capacity counts and the best fit is the first non-empty capacity at or
    above the sample's length. Ties go to the earliest sample and the lowest bin.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > seq_len):
        raise ValueError(f"lengths must lie in [1, {seq_len}]; got [{lengths.min()}, {lengths.max()}]")
    order = np.argsort(-lengths, kind="stable")
    bins = np.empty(lengths.size, dtype=np.int64)
    open_count = np.zeros(seq_len + 1, dtype=np.int64)  # free space -> how many bins have it
    open_bins: list[list[int]] = [[] for _ in range(seq_len + 1)]
    next_bin = 0
    for sample in order:
        size = int(lengths[sample])
        candidates = np.flatnonzero(open_count[size:])
        if candidates.size:
            free = size + int(candidates[0])
            bin_id = open_bins[free].pop()
            open_count[free] -= 1
        else:
            free, bin_id = seq_len, next_bin
            next_bin += 1
        bins[sample] = bin_id
        left = free - size
        if left > 0:
            open_bins[left].append(bin_id)
            open_count[left] += 1
    return _renumber_in_order(bins)


def _renumber_in_order(bins: np.ndarray) -> np.ndarray:
    """Number sequences by their first sample, so output order follows input order."""
    if bins.size == 0:
        return bins
    _, first = np.unique(bins, return_index=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[bins]


def build_sequences(samples: list[dict], bins: np.ndarray) -> pa.Table:
    """Concatenate the samples of each bin into one packed row (samples in input order)."""
    members: list[list[int]] = [[] for _ in range(int(bins.max()) + 1 if bins.size else 0)]
    for index, bin_id in enumerate(bins):
        members[bin_id].append(index)
    rows = []
    for indices in members:
        parts = [samples[i] for i in indices]
        rows.append({
            "input_ids": np.concatenate([p["input_ids"] for p in parts]),
            "labels": np.concatenate([p["labels"] for p in parts]),
            "segment_lengths": [len(p["input_ids"]) for p in parts],
            "images": [ref for p in parts for ref in p["images"]],
            "task": [p["task"] for p in parts],
            "ids": [p["id"] for p in parts],
        })
    return pa.Table.from_pylist(rows, schema=PACKED_SCHEMA)


def fill_stats(lengths: np.ndarray, sequences: int, seq_len: int) -> dict:
    total = int(np.asarray(lengths).sum())
    return {
        "samples": int(len(lengths)),
        "tokens": total,
        "sequences": int(sequences),
        "lower_bound_sequences": int(-(-total // seq_len)),
        "fill": total / (sequences * seq_len) if sequences else 0.0,
    }
