"""Figures of an ingest output for the report: what was dropped, the mix, sizes, caption lengths, throughput."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow.parquet as pq

SIDE_BINS = (0, 32, 64, 128, 256, 512, 1024, 2048)
WORD_BINS = (0, 3, 6, 10, 15, 20, 30, 50, 77)
CHAR_BINS = (0, 4, 8, 16, 24, 32, 48, 64, 128)


def histogram(values: list[float], edges: tuple[int, ...]) -> dict[str, int]:
    """Counts per [edge, next edge) bin, the last bin open-ended, keyed '64-128' or '2048+'."""
    labels = [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
    counts = dict.fromkeys(labels, 0)
    for value in values:
        index = sum(value >= e for e in edges) - 1
        counts[labels[max(index, 0)]] += 1
    return counts


def ingest_figures(stage_dir: str | Path) -> dict:
    """Distributions of the kept pairs and download throughput over time, from files the stage wrote."""
    stage = Path(stage_dir)
    indexes = sorted((stage / "shards").glob("pairs-*.parquet"))
    rows = [r for p in indexes for r in pq.read_table(p, columns=["lang", "caption", "original_width", "original_height"]).to_pylist()]
    shorter = [min(r["original_width"], r["original_height"]) for r in rows if r["original_width"] and r["original_height"]]
    lengths = collections.defaultdict(list)
    for r in rows:
        text = r["caption"] or ""
        lengths[r["lang"]].append(len("".join(text.split())) if r["lang"] == "zh" else len(text.split()))
    caption_length = {lang: histogram(v, CHAR_BINS if lang == "zh" else WORD_BINS) for lang, v in sorted(lengths.items())}
    throughput = []
    stats = sorted((stage / "_work" / "download").glob("*_stats.json"))
    shards = [json.loads(p.read_text()) for p in stats]
    if shards:
        start = min(s["start_time"] for s in shards)
        for s in sorted(shards, key=lambda s: s["end_time"]):
            throughput.append({"t_end_s": round(s["end_time"] - start, 2), "urls": s["count"],
                               "images_per_s": round(s["count"] / max(s["duration"], 1e-6), 1)})
    return {
        "original_shorter_side": histogram(shorter, SIDE_BINS),
        "caption_length": caption_length,  # words for English, characters for Chinese
        "download_throughput": throughput,  # one point per img2dataset shard, in completion order
    }
