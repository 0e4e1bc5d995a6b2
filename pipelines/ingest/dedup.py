"""Exact and near duplicates across the whole run, decided on metadata alone."""
from __future__ import annotations

import time

import numpy as np

# polars is imported where it is used, so the config schema (which reads MAX_RADIUS) loads without it:
# a GPU box that only renders, packs and trains has torch and transformers, not polars.

HASH_BITS = 256  # filters.phash256: 64 hex digits
HASH_WORDS = HASH_BITS // 64

# Calibrated on the shapes world (seed 0), every image passed through img2dataset's own resize
# (keep_ratio, JPEG q90) before phash256, as ingest hashes it. Hamming distance from each scene
# to a copy of it served differently, and to its nearest other scene (1500 scenes):
#
#   shorter side 128 / 224 px            median  p95   within 16 bits
#   re-saved at JPEG q70                      2   ~6   99% caught
#   scaled to 90%, saved at q75               2  6-8   99% caught
#   cropped 2% off two sides                 34   58   4% caught: crops move the low frequencies
#                                                      as far as an unrelated scene does
#   nearest other scene                 p1 48-50, p5 62; none within 16
#
# Of 50 000 scenes, 1.3% have another scene within 16 bits, nearly all single-shape scenes:
# one shape of the same kind in the same place in another colour or size, the same grayscale
# picture, which no grayscale hash tells apart. 16 bits sits above 99% of re-encodes and
# resizes and below the 1st percentile of other scenes.
DEFAULT_NEAR_DUPLICATE_RADIUS = 16
MAX_RADIUS = HASH_BITS // 2 - 1  # unrelated images differ in about half their bits

# The banded search verifies every pair that agrees on a band. Its cost is the sum of
# m(m-1)/2 over the buckets (one per band and band value): for uniform hashes about
# (radius + 1) * n^2 / 2 / 2^(256 / (radius + 1)); on the shapes world 6.5 times that (plain
# backgrounds agree on low-frequency bits), 0.34% of all n^2/2 pairs at radius 16: 42 000
# candidates for 5000 hashes, 4.3 million for 50 000. At radius 16 it grows as n^2 (uniform
# hashes: 3e8 candidates for a million, 28 s on 2 cores, bench/dedup.py); at radius 8 the bands
# are 28 bits wide and a million uniform hashes share 1e5 (3.5 s). Beyond this many checks the
# search is refused with the figures rather than left to run for hours.
MAX_CANDIDATE_PAIRS = 2_000_000_000
# Candidate pairs generated and verified at once; bounds the temporary arrays (about 40 bytes each).
VERIFY_PAIRS_PER_SLICE = 4_000_000
# When banding would verify more than this share of all pairs, the blockwise all-pairs check
# (numpy popcount over 4 uint64 words, no join) is the cheaper exact search.
ALL_PAIRS_SHARE = 0.25
# Measured on 2 cores, for the refusal's estimate: a band's join and check, and the all-pairs check.
CHECKS_PER_SECOND = {"bands": 1e7, "all_pairs": 5e7}


def check_radius(radius) -> None:
    if isinstance(radius, bool) or not (isinstance(radius, int) and 0 <= radius <= MAX_RADIUS):
        raise ValueError(f"ingest.filters.near_duplicate_radius: {radius!r}; expected an integer number of "
                         f"bits from 0 (identical hashes only) to {MAX_RADIUS}")


def mark_duplicates(
    samples: pl.DataFrame,
    radius: int = DEFAULT_NEAR_DUPLICATE_RADIUS,
    *,
    max_candidate_pairs: int = MAX_CANDIDATE_PAIRS,
    counters: dict | None = None,
) -> pl.DataFrame:
    """Mark later copies of an image as 'duplicate_of KEY', the earliest kept one in key order staying.

    Exact copies share the sha256 of the downloaded bytes and name the first copy in key
    order. Near copies (re-encodes, resizes) have 256-bit perceptual hashes within `radius`
    bits of each other: walking in key order, a sample is a duplicate of the earliest sample
    still kept within the radius, so a sample already marked never keeps others out (A ~ B,
    B ~ C, A !~ C: B goes, C stays). Only still-kept samples take part, so an image dropped for
    another reason never shadows a good one. `counters`, when given, receives the search's
    figures (hashes, bands, candidate pairs, biggest bucket, near pairs, seconds).
    """
    import polars as pl

    check_radius(radius)
    kept = samples.filter(pl.col("drop_reason").is_null()).sort("key")
    first_by_sha = (kept.filter(pl.col("sha256").is_not_null())
                    .group_by("sha256", maintain_order=True).agg(pl.col("key").first().alias("first_sha")))
    kept = kept.join(first_by_sha, on="sha256", how="left", maintain_order="left")
    exact = kept.filter(pl.col("first_sha") != pl.col("key")).select(
        "key", (pl.lit("duplicate_of ") + pl.col("first_sha")).alias("duplicate"))

    hashed = kept.filter((pl.col("first_sha").is_null() | (pl.col("first_sha") == pl.col("key")))
                         & pl.col("phash").is_not_null())
    # Identical hashes search as one: a placeholder image seen 10 000 times is one row, not
    # 50 million pairs. Its copies follow the earliest one's fate (kept: they name it; marked:
    # they name what it names), which is what the key-order walk would decide for them too.
    hashes = hashed.group_by("phash", maintain_order=True).agg(pl.col("key").first().alias("first_key"))
    words = hash_words(hashes["phash"], hashes["first_key"])
    pairs = near_pairs(words, radius, max_candidate_pairs=max_candidate_pairs, counters=counters)
    keeper = hashes["first_key"].gather(earliest_kept(len(hashes), pairs))
    near = (hashed.join(hashes.with_columns(keeper.alias("keeper")).select("phash", "keeper"), on="phash")
            .filter(pl.col("keeper") != pl.col("key"))
            .select("key", (pl.lit("duplicate_of ") + pl.col("keeper")).alias("duplicate")))
    if counters is not None:
        counters.update(exact_duplicates=exact.height, near_duplicates=near.height)

    return (
        samples.join(pl.concat([exact, near]), on="key", how="left", maintain_order="left")
        .with_columns(pl.coalesce("drop_reason", "duplicate").alias("drop_reason"))
        .drop("duplicate")
    )


def hash_words(phash: pl.Series, keys: pl.Series) -> np.ndarray:
    """The hashes (64 hex digits, or their 32 bytes) as 4 uint64 words each, shape (4, n), word 0 holding the first 16 digits."""
    import polars as pl

    if phash.dtype == pl.Binary:
        bad = pl.DataFrame({"phash": phash, "key": keys}).filter(pl.col("phash").bin.size() != HASH_BITS // 8)
        if bad.height:
            row = bad.row(0, named=True)
            raise ValueError(f"sample {row['key']}: phash of {len(row['phash'])} bytes is not a {HASH_BITS}-bit "
                             f"perceptual hash; {bad.height} such sample(s)")
        return np.frombuffer(b"".join(phash.to_list()), dtype=">u8").astype(np.uint64).reshape(-1, HASH_WORDS).T.copy()
    parsed = pl.DataFrame({"phash": phash, "key": keys}).with_columns(
        pl.col("phash").str.slice(16 * w, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False).alias(f"w{w}")
        for w in range(HASH_WORDS)
    )
    bad = parsed.filter((pl.col("phash").str.len_bytes() != HASH_BITS // 4)
                        | pl.any_horizontal(pl.col(f"w{w}").is_null() for w in range(HASH_WORDS)))
    if bad.height:
        key, value = bad.row(0, named=True)["key"], bad.row(0, named=True)["phash"]
        raise ValueError(f"sample {key}: phash {value!r} is not a {HASH_BITS}-bit perceptual hash "
                         f"({HASH_BITS // 4} hex digits, as filters.phash256 writes); {bad.height} such sample(s)")
    return np.stack([parsed[f"w{w}"].to_numpy() for w in range(HASH_WORDS)])


def hamming(words: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Bits that differ between hash i and hash j, pair by pair (popcount of XOR over the 4 words)."""
    distance = np.zeros(len(i), np.uint16)
    for word in words:
        distance += np.bitwise_count(word[i] ^ word[j])
    return distance


def band_widths(radius: int) -> list[int]:
    """The 256 bits cut into radius + 1 bands (at least 4, so a band fits a uint64), as even as they go.

    Two hashes within `radius` bits differ in at most `radius` bands, so they agree exactly on
    at least one: every near pair shares a (band, value) bucket, and the search is exact.
    """
    bands = max(radius + 1, HASH_WORDS)
    return [HASH_BITS // bands + (band < HASH_BITS % bands) for band in range(bands)]


def band_values(words: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits start..start+width of every hash (bit 0 is the most significant of word 0), as uint64."""
    word, offset = divmod(start, 64)
    values = words[word] << np.uint64(offset)
    if offset + width > 64:
        values |= words[word + 1] >> np.uint64(64 - offset)
    return values >> np.uint64(64 - width)


def near_pairs(
    words: np.ndarray,
    radius: int,
    *,
    max_candidate_pairs: int = MAX_CANDIDATE_PAIRS,
    counters: dict | None = None,
) -> np.ndarray:
    """Every pair (i, j), i < j, of hashes at most `radius` bits apart, as an (m, 2) array: exact, not approximate.

    Candidates are pairs that share a (band, value) bucket, found by a polars self-join on
    (band, value); each is verified by its true Hamming distance. Bucket sizes are counted
    first: when banding would verify a large share of all pairs (a large radius, or hashes
    that agree on most bands), a blockwise all-pairs check does the same job for less, and
    when even the cheaper of the two exceeds `max_candidate_pairs` the search is refused
    with the figures rather than left to run for hours.
    """
    started = time.perf_counter()
    count = words.shape[1]
    widths = band_widths(radius)
    starts = np.cumsum([0, *widths[:-1]]).tolist()
    # Pass 1 counts each band's buckets; pass 2 sorts the band again to pair them, so at most one
    # band's sort order (4 bytes a hash) is held at a time.
    candidates, biggest = 0, 1
    for start, width in zip(starts, widths):
        _, sizes = _shared_buckets(band_values(words, start, width))
        candidates += int((sizes * (sizes - 1) // 2).sum())
        biggest = max(biggest, int(sizes.max(initial=1)))
    all_pairs = count * (count - 1) // 2
    method = "all_pairs" if candidates > ALL_PAIRS_SHARE * all_pairs else "bands"
    checked = all_pairs if method == "all_pairs" else candidates
    if checked > max_candidate_pairs:
        raise ValueError(
            f"near-duplicate search: {count} distinct hashes at radius {radius} would check {checked:,} pairs "
            f"({candidates:,} sharing a band, {all_pairs:,} in all), over the limit of {max_candidate_pairs:,}; "
            f"lower ingest.filters.near_duplicate_radius (bands get wider and buckets smaller), or raise "
            f"the limit and expect about {checked / CHECKS_PER_SECOND[method] / 60:.0f} minutes")

    if method == "all_pairs":
        found = _all_pairs_within(words, radius)
    else:
        found = [pairs for start, width in zip(starts, widths)
                 for pairs in band_pairs_within(words, band_values(words, start, width), radius)]
    flat = np.unique(np.concatenate([np.zeros(0, np.uint64), *(i.astype(np.uint64) * count + j for i, j in found)]))
    pairs = np.stack([flat // max(count, 1), flat % max(count, 1)], axis=1).astype(np.uint32)
    if counters is not None:
        counters.update(
            hashes=count, radius=radius, bands=len(widths), method=method, candidate_pairs=candidates,
            checked_pairs=checked, biggest_bucket=biggest, near_pairs=len(pairs),
            seconds=round(time.perf_counter() - started, 3),
        )
    return pairs


def _shared_buckets(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes sorted by band value, and the (start, size) in that order of each value two or more hashes share."""
    order = np.argsort(values, kind="stable").astype(np.uint32)
    ordered = values[order]
    edges = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    run_starts = np.concatenate(([0], edges)).astype(np.int64)
    sizes = np.diff(np.concatenate((run_starts, [len(values)]))).astype(np.int64)
    shared = sizes > 1
    return (order, run_starts[shared]), sizes[shared]


def _pairs_in_runs(order: np.ndarray, run_starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of hashes that share a run of `order`, vectorised over the runs."""
    offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # place within its run
    members = np.repeat(run_starts, sizes) + offsets
    partners = np.repeat(sizes, sizes) - 1 - offsets  # the members after it in its run
    left = np.repeat(members, partners)
    right = left + 1 + np.arange(partners.sum()) - np.repeat(np.cumsum(partners) - partners, partners)
    a, b = order[left], order[right]
    return np.minimum(a, b), np.maximum(a, b)


def band_pairs_within(words: np.ndarray, values: np.ndarray, radius: int):
    """Pairs within `radius` among the hashes sharing a value of one band, in slices that bound memory."""
    (order, run_starts), sizes = _shared_buckets(values)
    pairs_per_run = sizes * (sizes - 1) // 2
    first = 0
    while first < len(sizes):
        if pairs_per_run[first] > VERIFY_PAIRS_PER_SLICE:  # one huge bucket: its members against each other, blockwise
            members = order[run_starts[first]:run_starts[first] + sizes[first]]
            for i, j in _all_pairs_within(words[:, members], radius):
                a, b = members[i], members[j]
                yield np.minimum(a, b), np.maximum(a, b)
            first += 1
            continue
        last = first + max(1, int(np.searchsorted(np.cumsum(pairs_per_run[first:]), VERIFY_PAIRS_PER_SLICE, "right")))
        last = min(last, len(sizes))
        i, j = _pairs_in_runs(order, run_starts[first:last], sizes[first:last])
        near = hamming(words, i, j) <= radius
        yield i[near], j[near]
        first = last


def _all_pairs_within(words: np.ndarray, radius: int, block_cells: int = 8_000_000) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs (i, j), i < j, within `radius` by checking every pair, a block of rows against all later rows at a time."""
    count = words.shape[1]
    block = max(1, block_cells // max(count, 1))
    found = []
    for start in range(0, count, block):
        stop = min(start + block, count)
        distance = np.zeros((stop - start, count - start), np.uint16)
        for word in words:
            distance += np.bitwise_count(word[start:stop, None] ^ word[None, start:])
        i, j = np.nonzero(distance <= radius)
        later = j > i  # the block's own rows sit at the start of the columns
        found.append(((i[later] + start).astype(np.uint32), (j[later] + start).astype(np.uint32)))
    return found


def earliest_kept(count: int, pairs: np.ndarray) -> np.ndarray:
    """For each hash (indexed in key order), the hash that stays for it: itself, or the earliest kept one within the radius.

    Walking in key order, a hash is kept when no earlier kept hash is near it; a hash already
    marked never keeps a later one out, so near-duplicate chains do not swallow each other.
    `pairs` are every near pair (i, j), i < j; the walk costs one step per pair.
    """
    keeper = list(range(count))
    if len(pairs):
        order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by later hash, then earlier: i is settled before j
        for i, j in pairs[order].tolist():
            if keeper[j] == j and keeper[i] == i:
                keeper[j] = i
    return np.array(keeper, dtype=np.int64)
