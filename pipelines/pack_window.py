"""One window of a packed output, end to end where it runs (a Ray task, or the job's own process): read its
records, draw the output's mixture, tokenize, pack, write its shards, and count what it holds.

What a window returns, and keeps beside its shards as `windows/<index>.json` (the mark that it is done, so
a killed pack resumes after it), is counts and histograms, never rows: the output's figures are sums of them.
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.manifest import write_json_atomic, write_parquet_atomic
from pipelines.pack import build_sequences, fill_stats, pack_figures, plan_sequences, split_text_sample
from pipelines.pack_selection import Selection, Window, read_window, weigh
from pipelines.qformer_text import QFormerInstructions, qformer_text
from pipelines.tokenize import IGNORE, Encoder, load_tokenizer
from templates.chat import get_chat_format


@dataclass(frozen=True)
class WindowSettings:
    """What every window of one output is packed with (picklable: it travels to Ray workers)."""

    output: str
    selection: Selection
    weights: dict[str, float]
    out_dir: str  # pack/<output>: shards/ and windows/ inside
    tokenizer_dir: str
    chat_format: str
    visual_tokens: int | Callable[[dict], int]  # see visual_token_counter
    seq_len: int
    loss_on: str = "assistant"
    mode: str = "block"
    max_images_per_sequence: int | None = None
    too_long: str = "drop"
    sequences_per_shard: int = 1000
    qformer_dir: str | None = None
    qformer_max_length: int | None = None
    qformer_text: str | None = None


def visual_token_counter(preset):
    """The LLM positions per image: the preset's fixed count, or (Qwen2-VL) a function of the image's size."""
    return preset.visual_tokens_for if preset.native_resolution else preset.visual_tokens


def prompt_encoder(preset, tokenizer) -> Encoder:
    """The encoder of a preset's prompts over a pack stage's tokenizer (its chat format and visual tokens): how
    training, evaluation and `loom lm` write a prompt as pack wrote it."""
    return Encoder(tokenizer, get_chat_format(preset.chat_format), visual_token_counter(preset))


def pad_id(encoder: Encoder) -> int:
    """The padding id batches use: `<pad>` where the tokenizer has one, else end-of-sequence (as LLaMA does)."""
    pad = encoder.tokenizer.token_to_id("<pad>")
    return encoder.eos_id if pad is None else pad


def window_stats_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / "windows" / f"{index:05d}.json"


def finished_window(out_dir: str | Path, index: int) -> dict | None:
    """A window's counts where an earlier run finished it (its shards are all written), else None."""
    path = window_stats_path(out_dir, index)
    return json.loads(path.read_text()) if path.exists() else None


def pack_window(window: Window, settings: WindowSettings) -> dict:
    """Ray task (or a plain call): read one window's records, weigh, tokenize and pack them, write its shards
    (packed-<window>-<n>.parquet, atomically) and its counts; return the counts."""
    records = read_window(window, settings.selection)
    drawn, mixture = weigh(records, settings.selection, settings.weights, settings.output)
    samples, dropped = _samples(drawn, records, settings)
    seq_len, cap = settings.seq_len, settings.max_images_per_sequence
    lengths = np.array([len(s["input_ids"]) + len(s["decoder_labels"]) for s in samples], dtype=np.int64)
    interleave = settings.mode == "interleave_same_task"
    tasks = np.unique([s["task"] for s in samples], return_inverse=True)[1] if interleave and samples else None
    images = np.array([len(s["images"]) for s in samples], dtype=np.int64) if cap is not None else None
    bins = plan_sequences(lengths, seq_len, groups=tasks, images=images, max_images=cap)
    shards = _write_shards(build_sequences(samples, bins, one_document=interleave), settings, window.index)
    stats = {"window": window.index, "records": len(records), "shards": shards, "dropped": dict(sorted(dropped.items())),
             "mixture": mixture, **window_counts(samples, lengths, bins, seq_len)}
    write_json_atomic(window_stats_path(settings.out_dir, window.index), stats)
    return stats


PACKED_COLUMNS = {"input_ids", "labels", "segment_lengths", "images"}


def packed_shards(out_dir: str | Path) -> list[Path]:
    """The shards of a finished packed output, each checked against what pack recorded before any training:
    every shard its windows wrote present, a readable parquet with the packed columns, no shard it did not
    write, each window's shards holding the sequences it counted and the whole the output manifest's.
    A missing, truncated, garbage or foreign shard raises ValueError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    again = f"re-run `loom pack` for this output folder (remove {out_dir.parent / 'manifest.json'} first)"
    windows, files = [], [out_dir / "manifest.json"]
    try:
        manifest = json.loads(files[0].read_text())
        for k in range(manifest["windows"]):
            files.append(window_stats_path(out_dir, k))
            windows.append(json.loads(files[-1].read_text()))
            missing = {"window", "shards", "sequences"} - set(windows[-1])
            if missing:
                raise KeyError(f"no {sorted(missing)}")
    except FileNotFoundError as err:
        raise ValueError(f"{files[-1]}: written by pack but missing; {again}") from err
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{files[-1]}: damaged ({type(err).__name__}: {err}); {again}") from err
    shards: list[Path] = []
    for window in windows:
        paths = [out_dir / "shards" / f"packed-{window['window']:05d}-{n:05d}.parquet" for n in range(window["shards"])]
        rows = 0
        for path in paths:
            if not path.is_file():
                raise ValueError(f"{path}: written by pack (window {window['window']}) but missing; {again}")
            try:
                metadata = pq.read_metadata(path)
            except (OSError, pa.ArrowException) as err:
                raise ValueError(f"{path}: not a readable parquet file ({err}); it was damaged after pack wrote "
                                 f"it: {again}") from err
            missing = PACKED_COLUMNS - set(metadata.schema.to_arrow_schema().names)
            if missing:
                raise ValueError(f"{path}: not a packed shard (no {sorted(missing)} column); {again}")
            rows += metadata.num_rows
        if rows != window["sequences"]:
            raise ValueError(f"{', '.join(p.name for p in paths)} in {out_dir / 'shards'}: hold {rows} sequences, "
                             f"window {window['window']} wrote {window['sequences']}; {again}")
        shards += paths
    foreign = sorted(set((out_dir / "shards").glob("packed-*.parquet")) - set(shards))
    if foreign:
        raise ValueError(f"{foreign[0]}: not written by the pack that finished {out_dir} (its windows list "
                         f"{len(shards)} shards); remove it, or {again}")
    if sum(w["sequences"] for w in windows) != manifest["sequences"]:
        raise ValueError(f"{out_dir / 'windows'}: its windows count {sum(w['sequences'] for w in windows)} "
                         f"sequences, {out_dir / 'manifest.json'} {manifest['sequences']}; {again}")
    return shards


def _samples(drawn: list[dict], records: list[dict], settings: WindowSettings) -> tuple[list[dict], collections.Counter]:
    """The drawn records tokenized (with each image's Q-Former text where the preset reads one), those over the
    sequence length or the image cap dropped with their reasons."""
    encoder = Encoder(load_tokenizer(settings.tokenizer_dir), get_chat_format(settings.chat_format),
                      settings.visual_tokens, settings.loss_on)
    samples, dropped = encode_samples(drawn, encoder, settings.seq_len, settings.too_long)
    if settings.qformer_dir:
        qformer = QFormerInstructions(settings.qformer_dir, settings.qformer_max_length)
        by_id = {r["id"]: r for r in records}
        for sample in samples:
            text = qformer_text(by_id[sample["id"].split("#part")[0]]["messages"], settings.qformer_text)
            sample["qformer_ids"] = [qformer(text)] * len(sample["images"])
    cap = settings.max_images_per_sequence
    if cap is not None:
        over = sum(1 for s in samples if len(s["images"]) > cap)
        if over:
            dropped["more_images_than_the_cap"] += over
            samples = [s for s in samples if len(s["images"]) <= cap]
    return samples, dropped


def _write_shards(table, settings: WindowSettings, index: int) -> int:
    """A window's packed rows as shards of sequences_per_shard rows, each written atomically; how many."""
    shards = Path(settings.out_dir) / "shards"
    for stale in shards.glob(f"packed-{index:05d}-*.parquet"):  # a killed attempt's: rewritten the same below
        stale.unlink()
    per_shard = settings.sequences_per_shard
    starts = range(0, table.num_rows, per_shard)
    for n, start in enumerate(starts):
        write_parquet_atomic(table.slice(start, per_shard), shards / f"packed-{index:05d}-{n:05d}.parquet")
    return len(starts)


def window_counts(samples: list[dict], lengths: np.ndarray, bins: np.ndarray, seq_len: int) -> dict:
    """What a window holds, as numbers and histograms that add up across windows: samples, sequences, images,
    samples by length and sequences by tokens (exact bins over 0..seq_len), and each task's samples and tokens."""
    sequence_tokens = np.bincount(bins, weights=lengths).astype(np.int64) if bins.size else np.zeros(0, np.int64)
    by_task: dict[str, list[int]] = {}
    for sample, length in zip(samples, lengths.tolist()):
        entry = by_task.setdefault(sample["task"], [0, 0])
        entry[0] += 1
        entry[1] += length
    return {
        "samples": len(samples), "sequences": len(sequence_tokens), "images": sum(len(s["images"]) for s in samples),
        "sample_lengths": np.bincount(lengths, minlength=seq_len + 1).tolist(),
        "sequence_tokens": np.bincount(sequence_tokens, minlength=seq_len + 1).tolist(),
        "tasks": {task: {"samples": n, "tokens": t} for task, (n, t) in sorted(by_task.items())},
    }


class OutputCounts:
    """An output's counts summed over its windows, in any order: what its manifest and report show."""

    def __init__(self, seq_len: int, datasets: tuple[str, ...]):
        self.seq_len = seq_len
        self.sample_lengths = np.zeros(seq_len + 1, np.int64)
        self.sequence_tokens = np.zeros(seq_len + 1, np.int64)
        self.tasks: dict[str, list[int]] = {}
        self.dropped: collections.Counter = collections.Counter()
        self.mixture = {prefix: {"records": 0, "samples": 0} for prefix in datasets}
        self.images = self.windows = 0

    def add(self, stats: dict) -> None:
        self.sample_lengths += np.asarray(stats["sample_lengths"], np.int64)
        self.sequence_tokens += np.asarray(stats["sequence_tokens"], np.int64)
        for task, counts in stats["tasks"].items():
            entry = self.tasks.setdefault(task, [0, 0])
            entry[0] += counts["samples"]
            entry[1] += counts["tokens"]
        self.dropped.update(stats["dropped"])
        for prefix, counts in stats["mixture"].items():
            for key in ("records", "samples"):
                self.mixture[prefix][key] += counts[key]
        self.images += stats["images"]
        self.windows += 1

    def summary(self) -> dict:
        sequences = int(self.sequence_tokens.sum())
        stats = fill_stats(self.sample_lengths, sequences, self.seq_len)
        return {**stats, "dropped": dict(sorted(self.dropped.items())),
                "figures": pack_figures(self.sample_lengths, self.sequence_tokens, self.tasks, self.seq_len),
                "images": self.images, "samples_per_sequence": stats["samples"] / max(sequences, 1),
                "windows": self.windows}


def encode_samples(records: list[dict], encoder: Encoder, seq_len: int, too_long: str
                   ) -> tuple[list[dict], collections.Counter]:
    """Samples of the records that fit (or split) in seq_len, and how many were dropped for which reason."""
    samples, dropped = [], collections.Counter()
    pair = encoder.chat_format.encoder_decoder
    for r in records:
        if pair:  # FlanT5: the prompt is the encoder input, the answer the decoder target
            input_ids, decoder_labels, images = encoder.encode_pair(r["messages"], r["task"], r["images"])
            labels = np.full(len(input_ids), IGNORE, np.int32)
        else:
            input_ids, labels, images = encoder.encode(r["messages"], r["task"], r["images"])
            decoder_labels = np.empty(0, np.int32)
        sample = {"input_ids": input_ids, "labels": labels, "decoder_labels": decoder_labels, "images": r["images"],
                  "task": r["task"], "id": r["id"]}
        if images != len(r["images"]):
            dropped["image_count_mismatch"] += 1
        elif len(input_ids) + len(decoder_labels) <= seq_len:  # an encoder-decoder row holds both within seq_len
            samples.append(sample)
        elif images:
            dropped["too_long_with_images"] += 1  # never cut: a cut inside an image would corrupt it
        elif too_long == "split" and not pair:  # an encoder-decoder answer cannot follow a cut prompt
            samples.extend(split_text_sample(sample, seq_len))
        else:
            dropped["too_long"] += 1
    return samples, dropped
