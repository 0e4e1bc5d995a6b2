"""The whole-run decisions of ingest (exact dedup, near dedup, the language quota) as Ray tasks over
partitions, with a driver that holds only the plan, per-partition counts and rank histograms.

Phases, each a set of tasks whose outputs sit in `_work/decide/<phase>/` (a finished task's
summary file marks it done, so a driver that dies here resumes from the last finished
partition, not from the start):

  map       per group of download shards: the kept rows' keys, languages and mix ranks (the
            ledger), and their (key, sha256, phash) split into P sha256 partitions
  exact     per sha256 partition: later copies of a sha256 (decisions, split by group), and the
            rows that stay, split into P perceptual-hash partitions
  collapse  per phash partition: identical hashes collapsed onto their earliest key; band records
            of each distinct hash split into B bucket partitions
  bands     per bucket partition: pairs within the radius (edges)
  walk      one task over the edges: the key-order walk (dedup.earliest_kept)
  resolve   per phash partition: marked hashes and their copies name who stays (decisions)
  quota     per group: rank histograms of the rows that survived dedup; then the ranks of each
            language's boundary bin, and one task that cuts them (pipelines/ingest/quota.py)

Groups are contiguous ranges of download shards; `finalize` (pipelines/ingest/finalize.py)
runs per group too, reading only its own batch of every decision file.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.ingest import partitioned_dedup as pd_
from pipelines.ingest import quota
from pipelines.ingest.download import shard_stem
from pipelines.ingest.partitions import read_partition, read_whole, write_partitioned, write_table
from pipelines.ingest.samples import DECISION_COLUMNS
from pipelines.ingest.mix import mix_report
from pipelines.manifest import atomic_path, write_json_atomic
from pipelines.ray_tasks import progress, run_bounded

LEDGER_SCHEMA = pa.schema([("key", pa.int64()), ("shard", pa.int32()), ("lang", pa.string()),
                           ("rank", pa.uint64())])
# rows a map task or a partition holds at once, by default
GROUP_ROWS = 1_000_000
PARTITION_ROWS = 1_000_000
BAND_RECORDS_PER_PARTITION = 4_000_000
SHUFFLES = ("exact_in", "hashed", "bands_in")  # files read only by the next phase's tasks
TASK_RETRIES = 3  # system failures (a worker or node lost) of a decision task; they are deterministic


@dataclass(frozen=True)
class DecisionPlan:
    """Fixed when the decision phase first starts, so that a resumed driver finds the same partitions."""

    group_starts: tuple[int, ...]  # first download shard of each group, and the shard count at the end
    partitions: int  # sha256 and perceptual-hash partitions
    seed: int
    radius: int
    search: str
    recall: float

    @property
    def groups(self) -> int:
        return len(self.group_starts) - 1

    def shards_of(self, group: int) -> range:
        return range(self.group_starts[group], self.group_starts[group + 1])

    def group_of(self, shards: np.ndarray) -> np.ndarray:
        return (np.searchsorted(np.asarray(self.group_starts), shards, side="right") - 1).astype(np.int32)

    @classmethod
    def make(cls, shard_rows: list[int], seed: int, radius: int, search: str, recall: float,
             partitions: int | None = None, group_rows: int = GROUP_ROWS) -> "DecisionPlan":
        starts, rows = [0], 0
        for shard, count in enumerate(shard_rows):
            if rows and rows + count > group_rows:
                starts.append(shard)
                rows = 0
            rows += count
        starts.append(len(shard_rows))
        if len(shard_rows) == 0:
            starts = [0, 0]
        partitions = partitions or max(2, math.ceil(sum(shard_rows) / PARTITION_ROWS))
        return cls(tuple(starts), partitions, seed, radius, search, recall)


class Decisions:
    """Where the decision phase keeps its files under `work` (the ingest stage's `_work`)."""

    def __init__(self, work: str | Path):
        self.root = Path(work) / "decide"

    def path(self, phase: str, name: str) -> Path:
        return self.root / phase / name

    def done(self, phase: str, index: int) -> Path:
        return self.path(phase, f"{index:05d}.json")

    def summaries(self, phase: str, count: int) -> list[dict]:
        return [json.loads(self.done(phase, i).read_text()) for i in range(count)]

    def pending(self, phase: str, count: int) -> list[int]:
        return [i for i in range(count) if not self.done(phase, i).exists()]

    def group_decisions(self, plan: DecisionPlan, group: int) -> pa.Table:
        """Every dedup decision about the rows of one group (DECISION_SCHEMA), from every partition."""
        files = ([self.path("exact", f"{p:05d}.decisions.arrow") for p in range(plan.partitions)]
                 + [self.path("resolve", f"{q:05d}.decisions.arrow") for q in range(plan.partitions)])
        return read_partition(files, group, pd_.DECISION_SCHEMA)


# ---- the tasks ---------------------------------------------------------------------------------

def map_group(work: str, plan: DecisionPlan, group: int) -> dict:
    """Ray task: one group's kept rows as a ledger (key, shard, language, mix rank) and as (key, sha256,
    phash) rows in sha256 partitions."""
    decisions = Decisions(work)
    frames = []
    for shard in plan.shards_of(group):
        table = pq.read_table(Path(work) / "samples" / f"{shard_stem(shard)}.parquet", columns=DECISION_COLUMNS,
                              filters=pc.is_null(pc.field("drop_reason")))
        frames.append(pl.from_arrow(table))
    rows = (pl.concat(frames) if frames else pl.DataFrame(schema={c: pl.String for c in DECISION_COLUMNS})
            ).with_columns(pl.col("shard").cast(pl.Int32))
    keys = rows["key"].to_list()
    digits = min((len(k) for k in keys), default=0)
    key_ints = rows["key"].cast(pl.Int64)
    if rows.height and (key_ints.cast(pl.String).str.zfill(digits) != rows["key"]).any():
        raise RuntimeError(f"ingest bookkeeping: group {group}: keys are not zero-padded integers of one width. "
                           "This is a Loom bug: please report it.")
    ledger = pa.table({"key": key_ints.to_numpy(), "shard": rows["shard"].to_numpy(), "lang": rows["lang"].to_arrow(),
                       "rank": quota.rank_prefixes(plan.seed, keys)}, schema=LEDGER_SCHEMA)
    write_table(ledger, decisions.path("ledger", f"{group:05d}.arrow"))
    hashed = pa.table({
        "key": ledger["key"], "shard": ledger["shard"],
        "sha256": rows["sha256"].str.decode("hex").to_arrow().cast(pa.binary(32)),
        "phash": rows["phash"].str.decode("hex").to_arrow().cast(pa.binary(32)),
    }, schema=pd_.EXACT_SCHEMA)
    write_partitioned(hashed, pd_.sha_partition(hashed, plan.partitions), plan.partitions,
                      decisions.path("exact_in", f"{group:05d}.arrow"))
    summary = {"rows": ledger.num_rows, "key_digits": digits}
    write_json_atomic(decisions.done("map", group), summary)
    return summary


def exact_partition(work: str, plan: DecisionPlan, partition: int) -> dict:
    """Ray task: the later copies of each sha256 in one partition, and the rest for the near search."""
    decisions = Decisions(work)
    rows = read_partition([decisions.path("exact_in", f"{g:05d}.arrow") for g in range(plan.groups)], partition,
                          pd_.EXACT_SCHEMA)
    duplicates, survivors = pd_.exact_duplicates(rows)
    write_partitioned(duplicates, plan.group_of(duplicates["shard"].to_numpy()), plan.groups,
                      decisions.path("exact", f"{partition:05d}.decisions.arrow"))
    write_partitioned(survivors, pd_.phash_partition(survivors, plan.partitions), plan.partitions,
                      decisions.path("hashed", f"{partition:05d}.arrow"))
    summary = {"rows": rows.num_rows, "exact_duplicates": duplicates.num_rows, "hashed": survivors.num_rows}
    write_json_atomic(decisions.done("exact", partition), summary)
    return summary


def collapse_partition(work: str, plan: DecisionPlan, partition: int, scheme: pd_.BandScheme,
                       band_partitions: int) -> dict:
    """Ray task: one perceptual-hash partition's distinct hashes (copies follow the earliest key), and
    their band records by bucket partition."""
    decisions = Decisions(work)
    rows = read_partition([decisions.path("hashed", f"{p:05d}.arrow") for p in range(plan.partitions)], partition,
                          pd_.HASHED_SCHEMA)
    representatives, copies = pd_.collapse_identical(rows)
    records, bucket = pd_.band_records(representatives, scheme, partition, band_partitions)
    write_partitioned(records, bucket, band_partitions, decisions.path("bands_in", f"{partition:05d}.arrow"))
    write_table(representatives.select(pd_.REPRESENTATIVE_SCHEMA.names),
                decisions.path("collapse", f"{partition:05d}.representatives.arrow"))
    write_table(copies, decisions.path("collapse", f"{partition:05d}.copies.arrow"))
    summary = {"rows": rows.num_rows, "hashes": representatives.num_rows, "identical_copies": copies.num_rows,
               "band_records": records.num_rows}
    write_json_atomic(decisions.done("collapse", partition), summary)
    return summary


def bands_partition(work: str, plan: DecisionPlan, partition: int, radius: int) -> dict:
    """Ray task: the pairs within the radius among the hashes sharing a bucket of this partition."""
    decisions = Decisions(work)
    records = read_partition([decisions.path("bands_in", f"{q:05d}.arrow") for q in range(plan.partitions)],
                             partition, pd_.BAND_SCHEMA)
    edges, counters = pd_.bucket_edges(records, radius)
    write_table(edges, decisions.path("bands", f"{partition:05d}.edges.arrow"))
    write_json_atomic(decisions.done("bands", partition), counters)
    return counters


def walk(work: str, plan: DecisionPlan, band_partitions: int) -> dict:
    """Ray task: the key-order walk over every edge; each marked hash's keeper, by phash partition."""
    decisions = Decisions(work)
    edges = pa.concat_tables([read_whole(decisions.path("bands", f"{b:05d}.edges.arrow"))
                              for b in range(band_partitions)] or [pd_.EDGE_SCHEMA.empty_table()])
    keepers, partition, pairs = pd_.walk_edges(edges)
    write_partitioned(keepers, partition, plan.partitions, decisions.path("walk", "keepers.arrow"))
    summary = {"near_pairs": pairs, "marked_hashes": keepers.num_rows}
    write_json_atomic(decisions.done("walk", 0), summary)
    return summary


def resolve_partition(work: str, plan: DecisionPlan, partition: int) -> dict:
    """Ray task: one phash partition's near decisions, split by group."""
    decisions = Decisions(work)
    representatives = read_whole(decisions.path("collapse", f"{partition:05d}.representatives.arrow"))
    copies = read_whole(decisions.path("collapse", f"{partition:05d}.copies.arrow"))
    keepers = read_partition([decisions.path("walk", "keepers.arrow")], partition, pd_.KEEPER_SCHEMA)
    near = pd_.resolve_near(representatives, copies, keepers)
    write_partitioned(near, plan.group_of(near["shard"].to_numpy()), plan.groups,
                      decisions.path("resolve", f"{partition:05d}.decisions.arrow"))
    summary = {"near_duplicates": near.num_rows}
    write_json_atomic(decisions.done("resolve", partition), summary)
    return summary


def _survivors(work: str, plan: DecisionPlan, group: int) -> pa.Table:
    decisions = Decisions(work)
    ledger = read_whole(decisions.path("ledger", f"{group:05d}.arrow"))
    decided = decisions.group_decisions(plan, group)["key"]
    return ledger.filter(pc.invert(pc.is_in(ledger["key"], value_set=decided.combine_chunks()
                                            if isinstance(decided, pa.ChunkedArray) else decided)))


def quota_histogram(work: str, plan: DecisionPlan, group: int) -> dict:
    """Ray task: per language, the rank histogram of one group's rows that dedup kept (saved as .npy)."""
    decisions = Decisions(work)
    survivors = _survivors(work, plan, group)
    langs = survivors["lang"].to_numpy(zero_copy_only=False)
    ranks = survivors["rank"].to_numpy()
    counts = {}
    for lang in sorted(set(langs.tolist())):
        histogram = quota.rank_histogram(ranks[langs == lang])
        with atomic_path(decisions.path("quota", f"{group:05d}.{lang}.npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, histogram)
        counts[lang] = int(histogram.sum())
    summary = {"survivors": counts}
    write_json_atomic(decisions.done("quota", group), summary)
    return summary


def quota_boundary(work: str, plan: DecisionPlan, group: int, key_digits: int, boundaries: dict) -> dict:
    """Ray task: one group's ranks (hex) inside each language's boundary bin."""
    survivors = _survivors(work, plan, group)
    return quota.boundary_ranks(plan.seed, survivors["key"].to_numpy(),
                                survivors["lang"].to_numpy(zero_copy_only=False), survivors["rank"].to_numpy(),
                                key_digits, boundaries)


def quota_cut(quotas: dict, available: dict, boundaries: dict, *ranks: dict) -> dict:
    """Ray task: each language's cut from the boundary ranks of every group (gathered here, not on the driver)."""
    return quota.cuts(quotas, available, boundaries, list(ranks))


# ---- the driver ---------------------------------------------------------------------------------

def _run(ray, decisions: Decisions, phase: str, count: int, fn, args, log) -> list[dict]:
    """The tasks of one phase that have not finished (index i gets `fn(*args(i))`); every summary."""
    pending = decisions.pending(phase, count)
    if pending:
        task = ray.remote(max_retries=TASK_RETRIES)(fn)
        tick = progress(log, f"ingest: decisions: {phase}", len(pending))
        for _ in run_bounded(ray, task, (args(i) for i in pending)):
            tick()
    return decisions.summaries(phase, count)


def decide(ray, work: str | Path, shard_rows: list[int], ratios: dict[str, float], seed: int, radius: int,
           search: str = "auto", recall: float = 0.99, partitions: int | None = None, group_rows: int = GROUP_ROWS,
           log=print) -> dict:
    """Run (or resume) the decision phase; return the plan and what finalize needs (cuts, key width) and
    the figures for the manifest. The driver never holds a row."""
    work = str(work)
    decisions = Decisions(work)
    plan_path = decisions.root / "plan.json"
    if plan_path.exists():
        plan = load_plan(work)
    else:
        plan = DecisionPlan.make(shard_rows, seed, radius, search, recall, partitions, group_rows)
        write_json_atomic(plan_path, asdict(plan))
    seconds, clock = {}, time.perf_counter()

    def lap(name):
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    P, G = plan.partitions, plan.groups
    mapped = _run(ray, decisions, "map", G, map_group, lambda g: (work, plan, g), log)
    key_digits = max((m["key_digits"] for m in mapped if m["rows"]), default=0)
    lap("map")
    exact = _run(ray, decisions, "exact", P, exact_partition, lambda p: (work, plan, p), log)
    lap("exact")
    hashed = sum(e["hashed"] for e in exact)
    scheme_path = decisions.root / "scheme.json"
    if scheme_path.exists():
        saved = json.loads(scheme_path.read_text())
        scheme = pd_.BandScheme(saved["method"], saved["radius"], tuple(tuple(p) for p in saved["positions"]),
                                saved["recall"], saved["seed"])
        band_partitions = saved["band_partitions"]
    else:
        scheme = pd_.plan_bands(hashed, radius, search, recall, seed)
        band_partitions = max(P, math.ceil(hashed * len(scheme.positions) / BAND_RECORDS_PER_PARTITION))
        write_json_atomic(scheme_path, {**asdict(scheme), "band_partitions": band_partitions})
    collapsed = _run(ray, decisions, "collapse", P, collapse_partition,
                     lambda q: (work, plan, q, scheme, band_partitions), log)
    lap("collapse")
    banded = _run(ray, decisions, "bands", band_partitions, bands_partition, lambda b: (work, plan, b, radius), log)
    lap("bands")
    (walked,) = _run(ray, decisions, "walk", 1, walk, lambda _: (work, plan, band_partitions), log)
    resolved = _run(ray, decisions, "resolve", P, resolve_partition, lambda q: (work, plan, q), log)
    lap("walk_and_resolve")

    cut_path = decisions.root / "cuts.json"
    if cut_path.exists():
        cut = json.loads(cut_path.read_text())
    else:
        survivors = _run(ray, decisions, "quota", G, quota_histogram, lambda g: (work, plan, g), log)
        languages = sorted({lang for s in survivors for lang in s["survivors"]})
        histograms = {lang: np.zeros(quota.RANK_BINS, np.int64) for lang in languages}
        for g, s in enumerate(survivors):  # summed one group at a time: 65,536 counts per language
            for lang in s["survivors"]:
                histograms[lang] += np.load(decisions.path("quota", f"{g:05d}.{lang}.npy"))
        quotas, boundaries = quota.plan_boundaries(histograms, ratios)
        available = {lang: int(h.sum()) for lang, h in histograms.items() if h.sum()}
        if boundaries:
            boundary = ray.remote(max_retries=TASK_RETRIES)(quota_boundary)
            refs = [boundary.remote(work, plan, g, key_digits, boundaries) for g in range(G)]
            language_cuts = ray.get(ray.remote(max_retries=TASK_RETRIES)(quota_cut).remote(
                quotas, available, boundaries, *refs))
        else:  # every language keeps all of its rows or none
            language_cuts = quota.cuts(quotas, available, {}, [])
        cut = {"cuts": language_cuts, "quota": quotas, "available": available, "boundaries": boundaries}
        write_json_atomic(cut_path, cut)
    lap("quota")

    exact_duplicates = sum(e["exact_duplicates"] for e in exact)
    near_duplicates = sum(r["near_duplicates"] for r in resolved)
    dedup = {
        "rows": sum(m["rows"] for m in mapped), "hashes": sum(c["hashes"] for c in collapsed),
        **scheme.to_dict(), "partitions": P, "band_partitions": band_partitions, "groups": G,
        "band_records": sum(c["band_records"] for c in collapsed),
        "candidate_pairs": sum(b["candidate_pairs"] for b in banded),
        "biggest_bucket": max((b["biggest_bucket"] for b in banded), default=0),
        "near_pairs": walked["near_pairs"], "exact_duplicates": exact_duplicates, "near_duplicates": near_duplicates,
        "seconds": seconds,
    }
    return {"plan": plan, "key_digits": key_digits, "cuts": cut["cuts"], "dedup": dedup,
            "mix": mix_report(ratios, cut["available"], cut["quota"])}


def load_plan(work: str | Path) -> DecisionPlan:
    saved = json.loads((Decisions(work).root / "plan.json").read_text())
    return DecisionPlan(**{**saved, "group_starts": tuple(saved["group_starts"])})


def clear_shuffles(work: str | Path) -> None:
    """Remove the rows the phases handed each other (most of the decision phase's disk: a band record per
    table and distinct hash), once finalize is done; the summaries and decisions stay."""
    import shutil

    for phase in SHUFFLES:
        shutil.rmtree(Decisions(work).root / phase, ignore_errors=True)
