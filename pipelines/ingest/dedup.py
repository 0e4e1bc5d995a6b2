"""Exact and perceptual duplicates across the whole run, decided on metadata alone."""
from __future__ import annotations

import polars as pl


def mark_duplicates(samples: pl.DataFrame) -> pl.DataFrame:
    """Mark later copies of an image as 'duplicate_of KEY', the first in key order staying.

    Exact copies share the sha256 of the downloaded bytes; near copies (re-encodes,
    resizes) share the 64-bit perceptual hash. Only still-kept samples take part, so an
    image dropped for another reason never shadows a good one.
    """
    kept = samples.filter(pl.col("drop_reason").is_null()).sort("key")
    first_by_sha = kept.group_by("sha256", maintain_order=True).agg(pl.col("key").first().alias("first_sha"))
    first_by_phash = kept.group_by("phash", maintain_order=True).agg(pl.col("key").first().alias("first_phash"))
    decided = (
        kept.join(first_by_sha, on="sha256", how="left")
        .join(first_by_phash, on="phash", how="left")
        .with_columns(
            pl.when(pl.col("first_sha") != pl.col("key"))
            .then(pl.lit("duplicate_of ") + pl.col("first_sha"))
            .when(pl.col("phash").is_not_null() & (pl.col("first_phash") != pl.col("key")))
            .then(pl.lit("duplicate_of ") + pl.col("first_phash"))
            .otherwise(None)
            .alias("duplicate")
        )
        .select("key", "duplicate")
    )
    return (
        samples.join(decided, on="key", how="left")
        .with_columns(pl.coalesce("drop_reason", "duplicate").alias("drop_reason"))
        .drop("duplicate")
    )
