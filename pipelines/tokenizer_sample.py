"""The conversations a tokenizer is trained on: a hash sample of at most `sample` records of the render
output, streamed from its files, so that training reads a bounded corpus however large the output is.

A record is in the sample when the hash of its id falls below sample / records: the same records on
every run and wherever the files are read; a corpus no larger than the sample is read whole, in order.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

import pyarrow.parquet as pq

from pipelines.pack_selection import BATCH_ROWS, record_hash
from pipelines.qformer_text import qformer_text

SALT = "tokenizer"  # the sample does not follow any output's mixture draw


def sample_fraction(records: int, sample: int) -> float:
    """The share of records the hash keeps: all of them when the corpus is no larger than the sample."""
    return 1.0 if records <= sample else sample / records


def file_sample(path: str, fraction: float) -> list[list[dict]]:
    """The messages of one instructions file's records whose id hashes below `fraction`, in file order.
    Reads `id` and `messages` a batch at a time (a task of its own on Ray)."""
    chosen: list[list[dict]] = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["id", "messages"]):
        if fraction >= 1:
            chosen.extend(batch.column("messages").to_pylist())
            continue
        keep = [k for k, record_id in enumerate(batch.column("id").to_pylist()) if record_hash(SALT, record_id) < fraction]
        if keep:
            chosen.extend(batch.column("messages").take(keep).to_pylist())
    return chosen


def sampled_conversations(per_file: Iterable[list[list[dict]]], sample: int) -> Iterator[list[dict]]:
    """The files' samples one conversation at a time, at most `sample` of them (the hash keeps sample records
    on average; the few over it at the corpus's end are left out, the same ones every time)."""
    return islice((messages for chosen in per_file for messages in chosen), sample)


def llm_texts(conversations: Iterable[list[dict]], chat_format) -> Iterator[str]:
    """What the LLM tokenizer learns from: the chat format's own strings, then every message."""
    yield from chat_format.strings()
    for messages in conversations:
        for message in messages:
            yield message["content"]


def qformer_texts(conversations: Iterable[list[dict]]) -> Iterator[str]:
    """What the Q-Former tokenizer learns from: each conversation's instruction and caption."""
    for messages in conversations:
        for kind in ("instruction", "caption"):
            yield qformer_text(messages, kind)
