"""Exact and near duplicates decided in hash partitions, with the decisions of the global walk.

`dedup.mark_duplicates` decides over every kept row in one process; this module splits the
same decisions into steps that each see one partition (pipelines/ingest/decide.py runs them as
Ray tasks):

1. exact: rows partitioned by sha256; in each partition the earliest key of a sha256 stays
   and the later ones are `duplicate_of` it.
2. collapse: the exact survivors partitioned by perceptual hash; rows with an identical hash
   search as one, represented by their earliest key (the representative), the others follow it.
3. bands: each representative's hash cut into bands (or, where exact bands would compare too
   many pairs, sampled bit tables: locality-sensitive hashing); (band, value) records
   partitioned by bucket; each bucket's members compared by their true Hamming distance.
   What comes out are edges: pairs of representatives within the radius.
4. walk: `dedup.earliest_kept` over the edges alone (sorted by key, a representative is kept
   unless an earlier kept one is near it). Only representatives with an edge take part, so
   this step sees the near pairs, not the rows.
5. resolve: back in each collapse partition, marked representatives and every copy get the
   key that stays for them.

With exact bands (pigeonhole: radius + 1 bands, two hashes within the radius agree on one)
every near pair is an edge, and since the walk's outcome for a representative depends only on
the pairs, the decisions equal `mark_duplicates`' row for row. Sampled tables find a pair at
distance d with probability 1 - (1 - C(256 - d, w) / C(256, w)) ** tables: `BandScheme.recall`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.ingest.dedup import HASH_BITS, band_pairs_within, band_widths, earliest_kept
from pipelines.ingest.partitions import digest_prefix, digest_words, mix64, range_partition

# The rows each step carries between tasks.
EXACT_SCHEMA = pa.schema([("key", pa.int64()), ("shard", pa.int32()), ("sha256", pa.binary(32)),
                          ("phash", pa.binary(32))])
HASHED_SCHEMA = pa.schema([("key", pa.int64()), ("shard", pa.int32()), ("phash", pa.binary(32))])
BAND_SCHEMA = pa.schema([("band", pa.int16()), ("value", pa.uint64()), ("key", pa.int64()), ("part", pa.int32()),
                         ("w0", pa.uint64()), ("w1", pa.uint64()), ("w2", pa.uint64()), ("w3", pa.uint64())])
EDGE_SCHEMA = pa.schema([("earlier", pa.int64()), ("later", pa.int64()), ("earlier_part", pa.int32()),
                         ("later_part", pa.int32())])
KEEPER_SCHEMA = pa.schema([("key", pa.int64()), ("keeper", pa.int64())])
COPY_SCHEMA = pa.schema([("key", pa.int64()), ("shard", pa.int32()), ("representative", pa.int64())])
REPRESENTATIVE_SCHEMA = pa.schema([("key", pa.int64()), ("shard", pa.int32())])
DECISION_SCHEMA = pa.schema([("key", pa.int64()), ("shard", pa.int32()), ("keeper", pa.int64())])

SEARCHES = ("auto", "exact", "lsh")
# auto: exact bands while, for uniform hashes, they would compare at most this many pairs per hash;
# beyond it (at radius 16: from ~200k distinct hashes) sampled tables, whose comparisons stay linear
EXACT_PAIRS_PER_HASH = 50
# sampled tables are this many bits wider than log2(hashes): about hashes / 2^(extra+1) random pairs each
LSH_EXTRA_BITS = 3
LSH_MAX_TABLES = 64


@dataclass(frozen=True)
class BandScheme:
    """How hashes are cut into buckets: contiguous bands (exact) or sampled bit tables (lsh)."""

    method: str  # "bands" | "lsh"
    radius: int
    positions: tuple[tuple[int, ...], ...]  # per band or table, the bit positions read (0 = most significant)
    recall: float  # the share of pairs at exactly `radius` bits that share a bucket (1.0 for bands)
    seed: int = 0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("positions")
        return {**out, "bands": len(self.positions), "band_bits": sorted({len(p) for p in self.positions})}


def pair_recall(distance: int, bits: int, tables: int) -> float:
    """Chance that two hashes `distance` bits apart agree on every one of `bits` sampled positions in at
    least one of `tables` tables, the positions drawn without replacement."""
    agree = math.comb(HASH_BITS - distance, bits) / math.comb(HASH_BITS, bits)
    return 1.0 - (1.0 - agree) ** tables


def plan_bands(hashes: int, radius: int, search: str = "auto", recall: float = 0.99, seed: int = 0) -> BandScheme:
    """The bucket scheme for `hashes` distinct hashes at `radius`.

    Exact bands make every near pair share a bucket, but with radius + 1 bands of 256 / (radius + 1)
    bits, uniform hashes share a band value with about (radius + 1) * n / 2^(width + 1) others: at
    radius 16 (15-bit bands) that grows as n^2 and is unaffordable past a few hundred thousand hashes.
    Sampled tables of log2(n) + LSH_EXTRA_BITS bits keep the random matches per table near n / 16, and
    enough tables that a pair at the radius is found with probability `recall`.
    """
    if search not in SEARCHES:
        raise ValueError(f"ingest.filters.near_duplicate_search: {search!r}; expected one of {', '.join(SEARCHES)}")
    widths = band_widths(radius)
    starts = np.cumsum([0, *widths[:-1]]).tolist()
    exact_pairs = sum(hashes * (hashes - 1) / 2 / 2.0 ** w for w in widths)
    if search == "exact" or (search == "auto" and exact_pairs <= EXACT_PAIRS_PER_HASH * max(hashes, 1)):
        return BandScheme("bands", radius, tuple(tuple(range(s, s + w)) for s, w in zip(starts, widths)), 1.0, seed)
    bits = min(64, max(16, math.ceil(math.log2(max(hashes, 2))) + LSH_EXTRA_BITS))
    tables = 1
    while pair_recall(radius, bits, tables) < recall and tables < LSH_MAX_TABLES:
        tables += 1
    rng = np.random.default_rng(seed)
    positions = tuple(tuple(sorted(rng.choice(HASH_BITS, bits, replace=False).tolist())) for _ in range(tables))
    return BandScheme("lsh", radius, positions, pair_recall(radius, bits, tables), seed)


def bucket_values(words: np.ndarray, positions: tuple[int, ...]) -> np.ndarray:
    """The bits of each hash at `positions`, packed in order into a uint64 (first position most significant)."""
    width = len(positions)
    contiguous = positions == tuple(range(positions[0], positions[0] + width))
    if contiguous and (positions[0] % 64) + width <= 128:
        from pipelines.ingest.dedup import band_values

        return band_values(words, positions[0], width)
    values = np.zeros(words.shape[1], np.uint64)
    one = np.uint64(1)
    for k, position in enumerate(positions):
        word, offset = divmod(position, 64)
        values |= ((words[word] >> np.uint64(63 - offset)) & one) << np.uint64(width - 1 - k)
    return values


def exact_duplicates(rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """One sha256 partition (EXACT_SCHEMA): the later copies of each sha256 with the earliest key
    (DECISION_SCHEMA), and the rows that stay with a perceptual hash, for the near search (HASHED_SCHEMA)."""
    if rows.num_rows == 0:
        return DECISION_SCHEMA.empty_table(), HASHED_SCHEMA.empty_table()
    ordered = rows.sort_by([("sha256", "ascending"), ("key", "ascending")])
    sha = ordered["sha256"].combine_chunks()
    keys = ordered["key"].to_numpy()
    has_sha = pc.is_valid(sha).to_numpy(zero_copy_only=False)
    same_as_previous = np.zeros(len(keys), bool)
    if len(keys) > 1:
        same_as_previous[1:] = pc.equal(sha.slice(1), sha.slice(0, len(keys) - 1)).fill_null(False).to_numpy(
            zero_copy_only=False)
    run_start = np.maximum.accumulate(np.where(~same_as_previous, np.arange(len(keys)), 0))
    later = same_as_previous & has_sha
    decisions = pa.table({"key": keys[later], "shard": ordered["shard"].to_numpy()[later],
                          "keeper": keys[run_start[later]]}, schema=DECISION_SCHEMA)
    stays = ~later & pc.is_valid(ordered["phash"]).to_numpy(zero_copy_only=False)
    survivors = ordered.filter(pa.array(stays)).select(HASHED_SCHEMA.names)
    return decisions, survivors


def collapse_identical(rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """One perceptual-hash partition (HASHED_SCHEMA): the representatives (earliest key of each distinct
    hash, with the hash), and the copies (COPY_SCHEMA: every other row with its representative)."""
    if rows.num_rows == 0:
        return HASHED_SCHEMA.empty_table(), COPY_SCHEMA.empty_table()
    ordered = rows.sort_by([("phash", "ascending"), ("key", "ascending")])
    phash = ordered["phash"].combine_chunks()
    keys = ordered["key"].to_numpy()
    first = np.ones(len(keys), bool)
    if len(keys) > 1:
        first[1:] = pc.not_equal(phash.slice(1), phash.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(keys)), 0))
    representatives = ordered.filter(pa.array(first))
    copies = pa.table({"key": keys[~first], "shard": ordered["shard"].to_numpy()[~first],
                       "representative": keys[run_start[~first]]}, schema=COPY_SCHEMA)
    return representatives, copies


def band_records(representatives: pa.Table, scheme: BandScheme, part: int, partitions: int) -> tuple[pa.Table, np.ndarray]:
    """Each representative once per band or table: (band, value, key, its collapse partition, its hash's
    words), and the band partition of each record (a hash of band and value, so buckets never split)."""
    words = digest_words(representatives["phash"])
    keys = representatives["key"].to_numpy()
    count = len(keys)
    tables, partition = [], []
    for band, positions in enumerate(scheme.positions):
        values = bucket_values(words, positions)
        tables.append(pa.table({
            "band": np.full(count, band, np.int16), "value": values, "key": keys,
            "part": np.full(count, part, np.int32), "w0": words[0], "w1": words[1], "w2": words[2], "w3": words[3],
        }, schema=BAND_SCHEMA))
        partition.append(range_partition(mix64(values ^ mix64(np.full(count, band + 1, np.uint64))), partitions))
    if not tables:
        return BAND_SCHEMA.empty_table(), np.zeros(0, np.int32)
    return pa.concat_tables(tables), np.concatenate(partition)


def bucket_edges(records: pa.Table, radius: int) -> tuple[pa.Table, dict]:
    """One band partition (BAND_SCHEMA): every pair of representatives sharing a bucket and within
    `radius` bits (EDGE_SCHEMA, earlier key first, each pair once), and the counts of the search."""
    counters = {"records": records.num_rows, "candidate_pairs": 0, "biggest_bucket": 1 if records.num_rows else 0,
                "edges": 0}
    found = []
    bands = records["band"].to_numpy()
    for band in np.unique(bands):
        members = records.filter(pa.array(bands == band)).sort_by("key")
        keys = members["key"].to_numpy()
        parts = members["part"].to_numpy()
        words = np.stack([members[f"w{w}"].to_numpy() for w in range(4)])
        values = members["value"].to_numpy()
        _, sizes = np.unique(values, return_counts=True)
        counters["candidate_pairs"] += int((sizes * (sizes - 1) // 2).sum())
        counters["biggest_bucket"] = max(counters["biggest_bucket"], int(sizes.max(initial=1)))
        for i, j in band_pairs_within(words, values, radius):
            found.append((keys[i], keys[j], parts[i], parts[j]))
    if not found:
        return EDGE_SCHEMA.empty_table(), counters
    earlier, later, earlier_part, later_part = (np.concatenate(c) for c in zip(*found))
    edges = _unique_edges(earlier, later, earlier_part, later_part)
    counters["edges"] = edges.num_rows
    return edges, counters


def _unique_edges(earlier, later, earlier_part, later_part) -> pa.Table:
    order = np.lexsort((later, earlier))
    earlier, later, earlier_part, later_part = earlier[order], later[order], earlier_part[order], later_part[order]
    fresh = np.ones(len(earlier), bool)
    fresh[1:] = (earlier[1:] != earlier[:-1]) | (later[1:] != later[:-1])
    return pa.table({"earlier": earlier[fresh], "later": later[fresh], "earlier_part": earlier_part[fresh],
                     "later_part": later_part[fresh]}, schema=EDGE_SCHEMA)


def walk_edges(edges: pa.Table) -> tuple[pa.Table, np.ndarray, int]:
    """The key-order walk over the near pairs: each marked representative with the key that stays for it
    (KEEPER_SCHEMA), the collapse partition of each (to send it back where its copies are), and the number
    of distinct pairs (a pair sharing buckets of several bands was found in each)."""
    if edges.num_rows == 0:
        return KEEPER_SCHEMA.empty_table(), np.zeros(0, np.int32), 0
    edges = _unique_edges(*(edges[name].to_numpy() for name in EDGE_SCHEMA.names))
    earlier, later = edges["earlier"].to_numpy(), edges["later"].to_numpy()
    nodes = np.unique(np.concatenate([earlier, later]))  # sorted keys: index order is key order
    part_of = np.zeros(len(nodes), np.int32)
    part_of[np.searchsorted(nodes, earlier)] = edges["earlier_part"].to_numpy()
    part_of[np.searchsorted(nodes, later)] = edges["later_part"].to_numpy()
    pairs = np.stack([np.searchsorted(nodes, earlier), np.searchsorted(nodes, later)], axis=1)
    keeper = earliest_kept(len(nodes), pairs)
    marked = np.flatnonzero(keeper != np.arange(len(nodes)))
    return (pa.table({"key": nodes[marked], "keeper": nodes[keeper[marked]]}, schema=KEEPER_SCHEMA),
            part_of[marked], edges.num_rows)


def resolve_near(representatives: pa.Table, copies: pa.Table, keepers: pa.Table) -> pa.Table:
    """One collapse partition's near decisions (DECISION_SCHEMA): marked representatives name their
    keeper; copies of a hash name the representative, or its keeper when it is marked itself."""
    keeper_of = dict(zip(keepers["key"].to_pylist(), keepers["keeper"].to_pylist()))
    rep_keys = representatives["key"].to_numpy()
    marked = np.array([k in keeper_of for k in rep_keys.tolist()], bool) if len(rep_keys) else np.zeros(0, bool)
    marked_reps = pa.table({"key": rep_keys[marked], "shard": representatives["shard"].to_numpy()[marked],
                            "keeper": np.array([keeper_of[k] for k in rep_keys[marked].tolist()], np.int64)},
                           schema=DECISION_SCHEMA)
    reps = copies["representative"].to_numpy()
    copy_keepers = np.array([keeper_of.get(r, r) for r in reps.tolist()], np.int64)
    copied = pa.table({"key": copies["key"].to_numpy(), "shard": copies["shard"].to_numpy(),
                       "keeper": copy_keepers}, schema=DECISION_SCHEMA)
    return pa.concat_tables([marked_reps, copied])


def sha_partition(rows: pa.Table, partitions: int) -> np.ndarray:
    """Partition of each row by its sha256 (uniform already); rows without one go to partition 0."""
    valid = pc.is_valid(rows["sha256"]).to_numpy(zero_copy_only=False)
    out = np.zeros(rows.num_rows, np.int32)
    if valid.any():
        out[valid] = range_partition(digest_prefix(rows["sha256"].filter(pa.array(valid))), partitions)
    return out


def phash_partition(rows: pa.Table, partitions: int) -> np.ndarray:
    """Partition of each row by a hash of its perceptual hash (whose own bits are far from uniform)."""
    words = digest_words(rows["phash"])
    folded = mix64(words[0]) ^ mix64(words[1] ^ np.uint64(0x9E3779B97F4A7C15)) ^ mix64(words[2]) ^ words[3]
    return range_partition(mix64(folded), partitions)
