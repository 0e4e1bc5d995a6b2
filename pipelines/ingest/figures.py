"""Figures of the kept pairs for the report, as histograms that partitions add up: sizes before
resizing, caption lengths, and download throughput over time."""
from __future__ import annotations

import numpy as np
import polars as pl

SIDE_BINS = (0, 32, 64, 128, 256, 512, 1024, 2048)
WORD_BINS = (0, 3, 6, 10, 15, 20, 30, 50, 77)
CHAR_BINS = (0, 4, 8, 16, 24, 32, 48, 64, 128)


def histogram(values, edges: tuple[int, ...]) -> dict[str, int]:
    """Counts per [edge, next edge) bin, the last bin open-ended, keyed '64-128' or '2048+'."""
    labels = [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
    index = np.clip(np.searchsorted(np.asarray(edges), np.asarray(values, dtype=np.float64), side="right") - 1, 0, None)
    counts = np.bincount(index, minlength=len(labels)) if len(index) else np.zeros(len(labels), np.int64)
    return dict(zip(labels, counts.tolist()))


def kept_figures(kept: pl.DataFrame) -> dict:
    """One shard's kept rows (lang, caption, original_width, original_height) as histograms."""
    sides = kept.filter((pl.col("original_width") > 0) & (pl.col("original_height") > 0)).select(
        pl.min_horizontal("original_width", "original_height"))
    lengths = kept.select("lang", pl.when(pl.col("lang") == "zh")
                          .then(pl.col("caption").fill_null("").str.replace_all(r"\s+", "").str.len_chars())
                          .otherwise(pl.col("caption").fill_null("").str.extract_all(r"\S+").list.len())
                          .alias("length"))
    return {
        "original_shorter_side": histogram(sides.to_series().to_numpy(), SIDE_BINS),
        # words for English, characters for Chinese
        "caption_length": {lang: histogram(lengths.filter(pl.col("lang") == lang)["length"].to_numpy(),
                                           CHAR_BINS if lang == "zh" else WORD_BINS)
                           for lang in sorted(set(lengths["lang"].drop_nulls().to_list()))},
    }


def add_figures(total: dict, part: dict) -> dict:
    """Two shards' histograms added up (`total` is updated and returned)."""
    side = total.setdefault("original_shorter_side", dict.fromkeys(part["original_shorter_side"], 0))
    for label, count in part["original_shorter_side"].items():
        side[label] = side.get(label, 0) + count
    for lang, counts in part["caption_length"].items():
        into = total.setdefault("caption_length", {}).setdefault(lang, dict.fromkeys(counts, 0))
        for label, count in counts.items():
            into[label] = into.get(label, 0) + count
    total["caption_length"] = dict(sorted(total.get("caption_length", {}).items()))
    return total


def download_throughput(stats: list[dict]) -> list[dict]:
    """One point per img2dataset shard (its _stats.json), in completion order."""
    if not stats:
        return []
    start = min(s["start_time"] for s in stats)
    return [{"t_end_s": round(s["end_time"] - start, 2), "urls": s["count"],
             "images_per_s": round(s["count"] / max(s["duration"], 1e-6), 1)}
            for s in sorted(stats, key=lambda s: s["end_time"])]
