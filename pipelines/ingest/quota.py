"""The language quota from rank histograms: `mix.apply_mix`'s exact cut, without gathering the rows.

`apply_mix` ranks every kept row by sha256(f"{seed}:{key}") and keeps, per language, the
`quota` lowest ranks. The same cut in two passes over partitions of rows:
1. each partition counts its rows per language in RANK_BINS bins of the rank's top 16 bits;
   the sums give each language's size (so the quota, `mix.plan_mix`) and the bin where its
   quota-th rank lies;
2. only the ranks inside that boundary bin are gathered (about rows / 65,536 per language)
   and sorted, which gives the quota-th rank itself.
A row is then kept when its rank is at most its language's cut: decided in each partition,
row by row, exactly as the global sort decides.
"""
from __future__ import annotations

import hashlib

import numpy as np

from pipelines.ingest.mix import plan_mix, rank_hex

RANK_BINS = 1 << 16
ALL, NONE = "all", "none"  # cuts that keep every row of a language, or none


def rank_prefixes(seed: int, keys: list[str]) -> np.ndarray:
    """The top 64 bits of each key's rank, as uint64."""
    digests = b"".join(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8] for key in keys)
    return np.frombuffer(digests, ">u8").astype(np.uint64) if keys else np.zeros(0, np.uint64)


def rank_histogram(prefixes: np.ndarray) -> np.ndarray:
    return np.bincount((prefixes >> np.uint64(48)).astype(np.int64), minlength=RANK_BINS).astype(np.int64)


def plan_boundaries(histograms: dict[str, np.ndarray], ratios: dict[str, float]) -> tuple[dict, dict]:
    """From the summed histograms: each language's quota (mix.plan_mix), and for each language cut inside
    its rows, the bin holding its quota-th rank and how many ranks of that bin it keeps."""
    available = {lang: int(h.sum()) for lang, h in histograms.items() if h.sum()}
    quota = plan_mix(available, ratios)
    boundaries = {}
    for lang, keep in quota.items():
        if 0 < keep < available.get(lang, 0):
            cumulative = np.cumsum(histograms[lang])
            bin_ = int(np.searchsorted(cumulative, keep))  # first bin whose running total reaches the quota
            boundaries[lang] = {"bin": bin_, "keep_in_bin": int(keep - (cumulative[bin_ - 1] if bin_ else 0))}
    return quota, boundaries


def boundary_ranks(seed: int, keys: np.ndarray, langs: np.ndarray, prefixes: np.ndarray, key_digits: int,
                   boundaries: dict[str, dict]) -> dict[str, list[str]]:
    """One partition's ranks (hex) inside each language's boundary bin; `keys` are the rows' integer keys,
    written back as their `key_digits`-digit strings to be ranked."""
    bins = (prefixes >> np.uint64(48)).astype(np.int64)
    out: dict[str, list[str]] = {}
    for lang, boundary in boundaries.items():
        inside = keys[(langs == lang) & (bins == boundary["bin"])]
        out[lang] = [rank_hex(seed, f"{key:0{key_digits}d}") for key in inside.tolist()]
    return out


def cuts(quota: dict[str, int], available: dict[str, int], boundaries: dict[str, dict],
         ranks: list[dict[str, list[str]]]) -> dict[str, str]:
    """Each language's cut: ALL, NONE, or the highest rank (hex) that is kept."""
    out = {}
    for lang, keep in quota.items():
        if keep <= 0:
            out[lang] = NONE
        elif keep >= available.get(lang, 0):
            out[lang] = ALL
        else:
            in_bin = sorted(rank for part in ranks for rank in part.get(lang, ()))
            out[lang] = in_bin[boundaries[lang]["keep_in_bin"] - 1]
    return out


def kept_by_mix(seed: int, keys: list[str], langs: list[str], language_cuts: dict[str, str]) -> np.ndarray:
    """Whether each row survives the mix: its language has a quota and its rank is within the cut
    (a language without a target share loses every row, as in mix.apply_mix)."""
    keep = np.zeros(len(keys), bool)
    for k, (key, lang) in enumerate(zip(keys, langs)):
        cut = language_cuts.get(lang, NONE)
        keep[k] = cut == ALL or (cut != NONE and rank_hex(seed, key) <= cut)
    return keep
