"""Brevity as a setting: which records of a dataset are asked for a short answer (or a long one), exactly.

InstructBLIP words some templates of its short-answer datasets "short"/"briefly" so that the model learns
to answer tersely when asked to, not always (arXiv 2305.06500, Sec. 2.2; Appendix Table 5 words 9 of its
13 caption and 6 of its 10 VQA templates so). Loom makes the share a per-dataset setting and realises it
exactly: of a dataset's N records, round(short * N) draw a `short` template, round((short + long) * N) -
round(short * N) a `long` one, the rest a `none` one (halves round up), each drawn uniformly within its
label's templates of the record's task and language.

Which records those are is decided by a seeded permutation of the records' positions in the dataset's
stream (0 .. N-1, in the order the adapter reads them): the record at position p asks for brevity when
its rank perm(p) is below the count. The rank needs only p, N and the seed, so a render cut into parts
of any size, on Ray or not, gives every record the same wording, and the counts hold over the whole
dataset however it was split.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

# the paper's template set, whose share of brevity wording is the default of a short-answer dataset
PAPER_SET = "instructblip_paper"
FEISTEL_ROUNDS = 4  # Luby-Rackoff: four rounds of a good round function give a pseudo-random permutation


@dataclass(frozen=True)
class BrevityDraw:
    """The brevity of every record of one dataset: the shares asked, over `total` records, keyed by
    `seed` and `dataset` (two datasets of one render get unrelated choices)."""

    short: float
    long: float
    total: int
    seed: int
    dataset: str

    def counts(self) -> dict[str, int]:
        """Records of each label over the whole dataset: exactly these, whatever the parts."""
        short = _nearest(self.short * self.total)
        worded = min(self.total, _nearest((self.short + self.long) * self.total))
        return {"short": short, "long": worded - short, "none": self.total - worded}

    def labels(self, first: int, count: int) -> list[str]:
        """The labels of the records at positions [first, first + count) of the dataset's stream."""
        if first < 0 or first + count > self.total:
            raise ValueError(f"positions {first}..{first + count - 1} outside the dataset's {self.total} records")
        counts = self.counts()
        if counts["short"] == counts["long"] == 0:
            return ["none"] * count
        if counts["none"] == counts["long"] == 0:
            return ["short"] * count
        ranks = _permute(np.arange(first, first + count, dtype=np.uint64), self.total, _keys(self.seed, self.dataset))
        short, worded = counts["short"], counts["short"] + counts["long"]
        return np.where(ranks < short, "short", np.where(ranks < worded, "long", "none")).tolist()


def _nearest(x: float) -> int:
    return math.floor(x + 0.5)


def _keys(seed: int, dataset: str) -> np.ndarray:
    digest = hashlib.sha256(f"loom-brevity:{seed}:{dataset}".encode()).digest()
    return np.frombuffer(digest, dtype="<u8")[:FEISTEL_ROUNDS].astype(np.uint64)


def _round_function(right: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser over (right + key): every output bit depends on every input bit."""
    z = right + key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _permute(positions: np.ndarray, total: int, keys: np.ndarray) -> np.ndarray:
    """A seeded bijection of [0, total) at `positions`: a balanced Feistel network over the smallest even
    power of two holding `total` (at most 4x it), applied again to any value that lands outside the range
    (cycle walking keeps it a bijection of the range; under four passes on average)."""
    half = max(1, ((total - 1).bit_length() + 1) // 2)
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    values = positions.copy()
    ranks = np.empty_like(values)
    pending = np.arange(len(values))
    with np.errstate(over="ignore"):  # the round function multiplies modulo 2^64 on purpose
        while len(pending):
            left, right = values[pending] >> shift, values[pending] & mask
            for key in keys:
                left, right = right, left ^ (_round_function(right, key) & mask)
            walked = (left << shift) | right
            inside = walked < np.uint64(total)
            ranks[pending[inside]] = walked[inside]
            values[pending[~inside]] = walked[~inside]
            pending = pending[~inside]
    return ranks


def paper_share(task: str) -> float:
    """The share of brevity-worded prompts InstructBLIP's Table 5 gives a task's records when drawn uniformly
    from it: 9/13 for captions (TextCaps' included), 6/10 for the VQA tasks, 0 for question generation. The
    held-out tasks the table leaves out (visual reasoning, video QA, classification, dialog) are question
    answering, and take the VQA column's."""
    from templates.library import set_templates, template_set

    column = task if task in template_set(PAPER_SET)["covers"] else "vqa"
    drawn = [t for t in set_templates(PAPER_SET, column) if t.draw]
    return sum(t.brevity == "short" for t in drawn) / len(drawn)
