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


THROUGHPUT_POINTS = 200  # a run of more shards is drawn as this many bins of completion time


def download_throughput(stats: list[list[float]]) -> list[dict]:
    """Per img2dataset shard ([start time, end time, URLs, seconds] from its _stats.json), its images/s by
    completion time; past THROUGHPUT_POINTS shards, the mean over each bin of completion time."""
    if not stats:
        return []
    table = np.array(sorted(stats, key=lambda s: s[1]), dtype=np.float64)
    ends = table[:, 1] - table[:, 0].min()
    urls, rates = table[:, 2], table[:, 2] / np.maximum(table[:, 3], 1e-6)
    if len(table) > THROUGHPUT_POINTS:
        bins = np.minimum((ends / max(ends.max(), 1e-6) * THROUGHPUT_POINTS).astype(int), THROUGHPUT_POINTS - 1)
        filled = np.flatnonzero(np.bincount(bins, minlength=THROUGHPUT_POINTS))
        count = np.bincount(bins, minlength=THROUGHPUT_POINTS)[filled]
        ends = np.bincount(bins, weights=ends, minlength=THROUGHPUT_POINTS)[filled] / count
        urls = np.bincount(bins, weights=urls, minlength=THROUGHPUT_POINTS)[filled]
        rates = np.bincount(bins, weights=rates, minlength=THROUGHPUT_POINTS)[filled] / count
    return [{"t_end_s": round(float(t), 2), "urls": int(u), "images_per_s": round(float(r), 1)}
            for t, u, r in zip(ends, urls, rates)]
