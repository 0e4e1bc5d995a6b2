"""Packing tokenized samples into fixed-length sequences without cross-contamination."""
from __future__ import annotations

from collections import deque

import numpy as np
import pyarrow as pa

from pipelines.render import IMAGE_REF
from pipelines.tokenize import IGNORE

PACKED_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("segment_lengths", pa.list_(pa.int32())),
    # encoder-decoder LLMs (FlanT5): input_ids/labels/segment_lengths are the encoder's; these the decoder's
    # targets, segment k of the decoder answering segment k of the encoder. Empty for decoder-only LLMs.
    ("decoder_labels", pa.list_(pa.int32())),
    ("decoder_segment_lengths", pa.list_(pa.int32())),
    ("images", pa.list_(IMAGE_REF)),
    # InstructBLIP: each image's instruction in the Q-Former's own (BERT) vocabulary; empty otherwise
    ("qformer_ids", pa.list_(pa.list_(pa.int32()))),
    ("task", pa.list_(pa.string())),
    ("ids", pa.list_(pa.string())),
])


def assign_bins(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """The sequence index of every sample: best-fit decreasing, deterministic, numbered by first sample.

    Lengths are integers in [1, seq_len], so best-fit decreasing runs on the histogram of lengths
    rather than on the samples (Krell et al., arXiv 2107.02027, plan on the histogram too): bins with
    the same free space are interchangeable, so they are kept as ranges of bin ids per free space,
    and all the samples of one length are placed in a few bulk steps. This places exactly as
    sample-by-sample best fit would (a bin that takes a sample of length l is then the best fit for
    the next one, until it has less than l left), so it opens as many sequences; the steps are then
    mapped back to samples, longest first and in input order within a length, with NumPy.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if lengths.size == 0:
        return np.empty(0, dtype=np.int64)
    if lengths.min() < 1 or lengths.max() > seq_len:
        raise ValueError(f"lengths must lie in [1, {seq_len}]; got [{lengths.min()}, {lengths.max()}]")
    best_fit = _BestFit(seq_len)
    counts = np.bincount(lengths, minlength=seq_len + 1)
    for size in np.flatnonzero(counts)[::-1]:
        best_fit.place(int(size), int(counts[size]))
    # the steps took the samples longest first, in input order within a length
    order = np.argsort((seq_len - lengths).astype(np.uint16 if seq_len < 2**16 else np.int64), kind="stable")
    bins = np.empty(lengths.size, dtype=np.int32)
    bins[order] = best_fit.bins_in_placement_order()
    return _renumber_in_order(bins, best_fit.bins).astype(np.int64)


class _BestFit:
    """Best-fit decreasing on counts: open bins as ranges of ids per free space, and the placement steps."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.open_count = np.zeros(seq_len + 1, dtype=np.int64)  # free space -> open bins with that much
        self.ranges: list[deque] = [deque() for _ in range(seq_len + 1)]  # free space -> (first, end) bin ids
        self.bins = 0
        self.steps: list[tuple[int, int, int]] = []  # (first bin, bins, samples per bin)

    def _fill(self, first: int, count: int, per_bin: int, free_after: int) -> None:
        self.steps.append((first, count, per_bin))
        if free_after:
            self.ranges[free_after].append((first, first + count))
            self.open_count[free_after] += count

    def place(self, size: int, left: int) -> None:
        """Place `left` samples of length `size`, each where sample-by-sample best fit would."""
        while left:
            fits = np.flatnonzero(self.open_count[size:])
            if not fits.size:  # new bins, each filled with as many as fit before the next one opens
                per_bin = self.seq_len // size
                full, rest = divmod(left, per_bin)
                if full:
                    self._fill(self.bins, full, per_bin, self.seq_len - per_bin * size)
                    self.bins += full
                if rest:
                    self._fill(self.bins, 1, rest, self.seq_len - rest * size)
                    self.bins += 1
                return
            free = size + int(fits[0])  # the tightest free space that fits; each such bin takes free // size
            per_bin = free // size
            queue = self.ranges[free]
            while left and queue:
                first, end = queue.popleft()
                full = min(end - first, left // per_bin)
                used = full
                if full:
                    self._fill(first, full, per_bin, free - per_bin * size)
                    left -= full * per_bin
                if left and full < end - first:  # fewer than per_bin left: one more bin takes them
                    self._fill(first + full, 1, left, free - left * size)
                    left, used = 0, used + 1
                if first + used < end:
                    queue.appendleft((first + used, end))
                self.open_count[free] -= used

    def bins_in_placement_order(self) -> np.ndarray:
        """(n,) the bin of each placed sample, in the order the steps placed them."""
        first, count, per_bin = (np.array(column, dtype=np.int64) for column in zip(*self.steps))
        # each step's bins first, first+1, ..., first+count-1 as one running sum of increments
        increments = np.ones(int(count.sum()), dtype=np.int64)
        starts = np.cumsum(count) - count
        increments[starts] = first - np.concatenate(([0], first[:-1] + count[:-1] - 1))
        bin_ids = np.cumsum(increments)
        return np.repeat(bin_ids.astype(np.int32), np.repeat(per_bin, count))


def _renumber_in_order(bins: np.ndarray, count: int) -> np.ndarray:
    """Number sequences by their first sample, so output order follows input order."""
    first = np.empty(count, dtype=np.int64)
    first[bins[::-1]] = np.arange(bins.size - 1, -1, -1)  # the last write per bin is its first sample
    rank = np.empty(count, dtype=bins.dtype)
    rank[np.argsort(first, kind="stable")] = np.arange(count)
    return rank[bins]


def plan_sequences(lengths: np.ndarray, seq_len: int, window: int | None = None, groups: np.ndarray | None = None,
                   images: np.ndarray | None = None, max_images: int | None = None) -> np.ndarray:
    """The sequence of every sample, packed by `assign_bins` under three bounds, numbered by first sample.

    window: samples are packed in consecutive windows of this many, so memory stays flat however many
      there are (no sequence spans two windows).
    groups: samples of different groups never share a sequence (interleave_same_task packs by task).
    images, max_images: at most max_images images per sequence (the vision tower's memory).
    """
    lengths = np.asarray(lengths)
    n = lengths.size
    bins = np.empty(n, dtype=np.int64)
    if images is not None and max_images is not None and n and int(np.max(images)) > max_images:
        first = int(np.argmax(np.asarray(images) > max_images))
        raise ValueError(f"sample {first} holds {int(images[first])} images, more than max_images_per_sequence "
                         f"{max_images}; raise the cap or drop such samples")
    opened = 0
    for start in range(0, n, window or max(n, 1)):
        stop = min(n, start + (window or n))
        members = np.arange(start, stop)
        keys = groups[start:stop] if groups is not None else np.zeros(stop - start, dtype=np.int8)
        for key in np.unique(keys):
            chosen = members[keys == key]
            local = _capped(lengths[chosen], seq_len, None if images is None else np.asarray(images)[chosen], max_images)
            bins[chosen] = local + opened
            opened += int(local.max()) + 1
    return _renumber_in_order(bins, opened) if n else bins


def _capped(lengths: np.ndarray, seq_len: int, images: np.ndarray | None, max_images: int | None) -> np.ndarray:
    """assign_bins, then the samples that put a sequence over max_images moved out and packed again."""
    bins = assign_bins(lengths, seq_len)
    if images is None or max_images is None:
        return bins
    order = np.lexsort((np.arange(bins.size), bins))  # by sequence, input order inside
    running = np.cumsum(images[order])
    sequence_start = np.r_[0, np.flatnonzero(np.diff(bins[order])) + 1]
    before = np.repeat(running[sequence_start] - images[order][sequence_start], np.diff(np.r_[sequence_start, bins.size]))
    over = np.zeros(bins.size, dtype=bool)
    over[order] = running - before > max_images  # the images so far in its sequence pass the cap
    if not over.any():
        return bins
    kept = np.unique(bins[~over], return_inverse=True)[1]
    moved = _capped(lengths[over], seq_len, images[over], max_images)
    result = np.empty(bins.size, dtype=np.int64)
    result[~over] = kept
    result[over] = moved + (int(kept.max()) + 1 if kept.size else 0)
    return result


def build_sequences(samples: list[dict], bins: np.ndarray, one_document: bool = False) -> pa.Table:
    """Concatenate the samples of each bin into one packed row (samples in input order). Each sample is
    a segment of its own (attention and positions restart), or with one_document the whole row is one
    segment (interleave_same_task: a task's samples read as one interleaved image-text document)."""
    members: list[list[int]] = [[] for _ in range(int(bins.max()) + 1 if bins.size else 0)]
    for index, bin_id in enumerate(bins):
        members[bin_id].append(index)
    rows = []
    for indices in members:
        parts = [samples[i] for i in indices]
        lengths = [len(p["input_ids"]) for p in parts]
        rows.append({
            "input_ids": np.concatenate([p["input_ids"] for p in parts]),
            "labels": np.concatenate([p["labels"] for p in parts]),
            "segment_lengths": [sum(lengths)] if one_document else lengths,
            "decoder_labels": np.concatenate([p.get("decoder_labels", np.empty(0, np.int32)) for p in parts]),
            "decoder_segment_lengths": [len(p["decoder_labels"]) for p in parts if len(p.get("decoder_labels", ()))],
            "images": [ref for p in parts for ref in p["images"]],
            "qformer_ids": [ids for p in parts for ids in p.get("qformer_ids", [])],
            "task": [p["task"] for p in parts],
            "ids": [p["id"] for p in parts],
        })
    return pa.Table.from_pylist(rows, schema=PACKED_SCHEMA)


def split_text_sample(sample: dict, seq_len: int) -> list[dict]:
    """A text-only sample longer than seq_len as consecutive pieces of at most seq_len tokens; nothing is
    predicted across a cut (each piece's first label is ignored, as at every segment start)."""
    pieces = []
    for k, start in enumerate(range(0, len(sample["input_ids"]), seq_len)):
        labels = np.array(sample["labels"][start:start + seq_len])
        labels[0] = IGNORE
        pieces.append({**sample, "input_ids": sample["input_ids"][start:start + seq_len], "labels": labels,
                       "id": f"{sample['id']}#part{k}"})
    return pieces


def fill_stats(length_counts: np.ndarray, sequences: int, seq_len: int) -> dict:
    """Samples, tokens and how full the sequences are, from the histogram of sample lengths
    (length_counts[l]: the samples of l tokens, l in 0..seq_len)."""
    length_counts = np.asarray(length_counts, dtype=np.int64)
    total = int(np.arange(length_counts.size) @ length_counts)
    return {
        "samples": int(length_counts.sum()),
        "tokens": total,
        "sequences": int(sequences),
        "lower_bound_sequences": int(-(-total // seq_len)),
        "fill": total / (sequences * seq_len) if sequences else 0.0,
    }


def pack_figures(length_counts: np.ndarray, sequence_token_counts: np.ndarray, tasks: dict[str, tuple[int, int]],
                 seq_len: int, buckets: int = 16) -> dict:
    """What a report shows of one packed output, from histograms (so windows add theirs up): sample lengths
    before packing (length_counts[l]: samples of l tokens), how full the sequences are after
    (sequence_token_counts[t]: sequences holding t tokens, t in 0..seq_len), and each task's share of samples
    and tokens (tasks: task -> (samples, tokens))."""
    length_counts = np.asarray(length_counts, dtype=np.int64)
    sequence_token_counts = np.asarray(sequence_token_counts, dtype=np.int64)
    width = -(-seq_len // buckets)
    lengths = np.arange(1, length_counts.size)  # a sample holds at least one token
    length_bucket = np.bincount((lengths - 1) // width, weights=length_counts[1:], minlength=buckets).astype(np.int64)
    fill_bucket = np.minimum(((np.arange(sequence_token_counts.size) / seq_len) * 10).astype(int), 9)
    fill_counts = np.bincount(fill_bucket, weights=sequence_token_counts, minlength=10).astype(np.int64)
    total_tokens = max(int(np.arange(length_counts.size) @ length_counts), 1)
    return {
        "sample_length": {f"{k * width + 1}-{min((k + 1) * width, seq_len)}": int(c) for k, c in enumerate(length_bucket)},
        "sequence_fill": {f"{k / 10:.1f}-{(k + 1) / 10:.1f}": int(c) for k, c in enumerate(fill_counts)},
        "tasks": {task: {"samples": int(n), "tokens": int(t), "token_share": round(int(t) / total_tokens, 4)}
                  for task, (n, t) in sorted(tasks.items())},
    }
