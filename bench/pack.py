"""Packing: fill and speed of Loom's `assign_bins` against trl's `pack_dataset(strategy="bfd")`, padding
to the sequence length and dynamic padding, on the same sample lengths, in one run.

    pip install --no-deps trl        # trl's packer needs only datasets and pyarrow, already installed
    python bench/pack.py [--samples 1000000] [--seq-len 2048] [--repeats 3] [--batch 16]

Two length mixes (token counts including visual tokens), each seeded:
- llava15: LLaVA-1.5-like, 576 visual tokens per image: short-answer VQA, captions and detailed
  descriptions, multi-turn conversations, OCR conversations, and text-only conversations.
- qformer: Q-Former-like (BLIP-2, InstructBLIP, MiniGPT-4), 32 visual tokens per image: short-answer
  VQA, captions, conversations, long reasoning.
Lengths above the sequence length are clipped to it (a packer refuses or splits them; here they only
fill a sequence alone).

For each mix: sequences, fill (real tokens / (sequences x seq_len); for dynamic padding real tokens /
padded tokens in batches of --batch samples in input order), samples/s of the bin assignment (Loom:
`assign_bins`; trl: its whole `pack_dataset`, as a user calls it: by default on batches of 1,000
samples, and with the whole dataset as one batch, its best fill), and the lower bound
ceil(total tokens / seq_len).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.pack import assign_bins  # noqa: E402


def _uniform(rng, n, low, high):
    return rng.integers(low, high + 1, n)


def _log_uniform(rng, n, low, high):
    return np.exp(rng.uniform(np.log(low), np.log(high), n)).astype(np.int64)


# mix -> [(share, visual tokens, text-length sampler)]
MIXES = {
    "llava15": [
        (0.40, 576, lambda rng, n: _uniform(rng, n, 30, 120)),        # short-answer VQA, a few turns
        (0.15, 576, lambda rng, n: _uniform(rng, n, 40, 350)),        # captions, detailed descriptions
        (0.25, 576, lambda rng, n: _log_uniform(rng, n, 150, 1400)),  # multi-turn conversations
        (0.10, 576, lambda rng, n: _uniform(rng, n, 100, 700)),       # OCR / text-rich conversations
        (0.10, 0, lambda rng, n: _log_uniform(rng, n, 50, 2048)),     # text-only conversations
    ],
    "qformer": [
        (0.50, 32, lambda rng, n: _uniform(rng, n, 15, 60)),          # short-answer VQA
        (0.20, 32, lambda rng, n: _uniform(rng, n, 10, 40)),          # captions
        (0.20, 32, lambda rng, n: _log_uniform(rng, n, 100, 900)),    # conversations
        (0.10, 32, lambda rng, n: _log_uniform(rng, n, 200, 1500)),   # long reasoning
    ],
}


def mix_lengths(name: str, samples: int, seq_len: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for share, visual, text in MIXES[name]:
        count = int(round(share * samples))
        parts.append(visual + text(rng, count))
    lengths = np.concatenate(parts)[:samples]
    rng.shuffle(lengths)
    return np.clip(lengths, 1, seq_len)


def trl_pack(lengths: np.ndarray, seq_len: int, whole: bool) -> tuple[int, float]:
    """(sequences, seconds) of trl's pack_dataset on a dataset whose input_ids have these lengths."""
    import datasets
    import pyarrow as pa
    from datasets import Dataset
    from trl import pack_dataset

    datasets.disable_progress_bars()

    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    values = pa.array(np.zeros(int(offsets[-1]), dtype=np.int8))  # the packer moves tokens; their values do not matter
    table = pa.table({"input_ids": pa.LargeListArray.from_arrays(pa.array(offsets), values)})
    dataset = Dataset(table)
    map_kwargs = {"batch_size": len(dataset)} if whole else None
    started = time.perf_counter()
    packed = pack_dataset(dataset, seq_len, strategy="bfd", map_kwargs=map_kwargs)
    seconds = time.perf_counter() - started
    return len(packed), seconds


def dynamic_padding_fill(lengths: np.ndarray, batch: int) -> float:
    usable = lengths[: len(lengths) // batch * batch].reshape(-1, batch)
    return float(usable.sum() / (usable.max(axis=1) * batch).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="samples per batch for dynamic padding")
    parser.add_argument("--trl-samples", type=int, default=None, help="samples for trl (default: --samples)")
    parser.add_argument("--out", default="/tmp/loom-bench-pack.json")
    args = parser.parse_args()
    seq_len = args.seq_len
    results = {"samples": args.samples, "seq_len": seq_len, "repeats": args.repeats, "mixes": {}}
    for name in MIXES:
        lengths = mix_lengths(name, args.samples, seq_len)
        total = int(lengths.sum())
        lower = -(-total // seq_len)
        times = []
        for _ in range(args.repeats + 1):  # the first round warms up
            started = time.perf_counter()
            bins = assign_bins(lengths, seq_len)
            times.append(time.perf_counter() - started)
        loom_seconds = statistics.median(times[1:])
        loom_sequences = int(bins.max()) + 1
        assert np.bincount(bins, weights=lengths).max() <= seq_len
        row = {
            "tokens": total, "mean_length": round(total / len(lengths), 1), "lower_bound_sequences": lower,
            "loom": {"sequences": loom_sequences, "fill": round(total / (loom_sequences * seq_len), 5),
                     "seconds": round(loom_seconds, 4), "samples_per_s": round(len(lengths) / loom_seconds)},
            "pad_to_seq_len": {"sequences": len(lengths), "fill": round(total / (len(lengths) * seq_len), 5)},
            "dynamic_padding": {"sequences": len(lengths), "batch": args.batch,
                                "fill": round(dynamic_padding_fill(lengths, args.batch), 5)},
        }
        trl_lengths = lengths[: args.trl_samples] if args.trl_samples else lengths
        for label, whole in (("trl_bfd", False), ("trl_bfd_one_batch", True)):
            sequences, seconds = trl_pack(trl_lengths, seq_len, whole)
            trl_total = int(trl_lengths.sum())
            row[label] = {"samples": len(trl_lengths), "sequences": sequences,
                          "fill": round(trl_total / (sequences * seq_len), 5), "seconds": round(seconds, 2),
                          "samples_per_s": round(len(trl_lengths) / seconds)}
            row[label]["loom_speed_ratio"] = round(row["loom"]["samples_per_s"] / row[label]["samples_per_s"], 1)
            print(f"{name}: {label} done in {seconds:.1f} s", file=sys.stderr)
        results["mixes"][name] = row
        print(f"{name}: loom {loom_sequences} sequences (lower bound {lower}), "
              f"{row['loom']['samples_per_s']:,} samples/s", file=sys.stderr)
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
