"""Bring the kept pairs to a target language ratio by deterministic downsampling."""
from __future__ import annotations

import hashlib
import math

import polars as pl


def normalise_ratios(languages: dict[str, float], normalise: bool = True) -> dict[str, float]:
    """The target shares, summing to 1. With `normalise` False, shares that do not already sum to 1 (within
    1e-6) are refused rather than rescaled without a word."""
    if not isinstance(languages, dict) or not languages or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in languages.values()):
        raise ValueError(
            f"ingest.languages: {languages!r}: expected a mapping of language code to a positive share, "
            "e.g. {en: 0.773, zh: 0.227}"
        )
    total = float(sum(languages.values()))
    if not normalise and abs(total - 1.0) > 1e-6:
        raise ValueError(f"ingest.languages: {languages!r}: the shares add up to {total:g}, not 1; correct them, "
                         "or set ingest.normalise_languages: true to have them rescaled")
    return {lang: share / total for lang, share in languages.items()}


def plan_mix(available: dict[str, int], ratios: dict[str, float]) -> dict[str, int]:
    """How many samples of each language to keep: the most that meets the ratio exactly.

    The scarcest language relative to its share sets the total; every other language is cut
    to its share of that total. Languages with a target share but no samples leave the mix
    unreachable, so the caller reports it rather than silently changing the target.
    """
    present = {lang: available.get(lang, 0) for lang in ratios}
    if any(count == 0 for count in present.values()):
        return {lang: count for lang, count in present.items()}
    total = min(count / ratios[lang] for lang, count in present.items())
    return {lang: min(present[lang], math.floor(total * ratios[lang] + 0.5)) for lang in ratios}


def rank_hex(seed: int, key: str) -> str:
    """A row's place in the mix's random order: the lowest ranks of each language are kept."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def mix_report(ratios: dict[str, float], available: dict[str, int], quota: dict[str, int]) -> dict:
    """The target shares, the rows available and kept per language, and the kept shares."""
    kept_total = sum(quota.values())
    return {
        "target": ratios,
        "available": dict(sorted(available.items())),
        "kept": dict(sorted(quota.items())),
        "kept_share": {lang: (count / kept_total if kept_total else 0.0) for lang, count in sorted(quota.items())},
        "reachable": all(available.get(lang, 0) > 0 for lang in ratios),
    }


def apply_mix(samples: pl.DataFrame, ratios: dict[str, float], seed: int) -> tuple[pl.DataFrame, dict]:
    """Mark samples beyond each language's quota as 'mix_downsampled'; return the report."""
    kept = samples.filter(pl.col("drop_reason").is_null())
    available = {row["lang"]: row["len"] for row in kept.group_by("lang").len().iter_rows(named=True)}
    quota = plan_mix(available, ratios)
    ranked = kept.select("key", "lang").with_columns(
        pl.col("key").map_elements(lambda k: rank_hex(seed, k), return_dtype=pl.String).alias("rank")
    )
    ranked = ranked.sort("rank").with_columns(pl.int_range(pl.len()).over("lang").alias("position"))
    quotas = pl.DataFrame({"lang": list(quota), "quota": list(quota.values())}, schema={"lang": pl.String, "quota": pl.Int64})
    cut = (
        ranked.join(quotas, on="lang", how="left")
        .filter(pl.col("quota").is_null() | (pl.col("position") >= pl.col("quota")))
        .select("key", pl.lit("mix_downsampled").alias("mix_reason"))
    )
    marked = (
        samples.join(cut, on="key", how="left")
        .with_columns(pl.coalesce("drop_reason", "mix_reason").alias("drop_reason"))
        .drop("mix_reason")
    )
    return marked, mix_report(ratios, available, quota)
