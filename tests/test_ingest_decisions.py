"""The whole-run decisions (dedup, near dedup, the language quota) as Ray tasks over partitions: the same
decisions as the global algorithm, a driver that never reads a row, and a resume from the last finished
partition after the driver is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from decision_oracle import distributed_decisions, oracle_decisions
from pipelines.ingest.synthetic import write_ledger

RATIOS = {"en": 0.773, "zh": 0.227}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def decide_and_finalize(ray, stage: Path, counts: list[int], **options) -> dict:
    from pipelines.ingest.decide import decide
    from pipelines.ingest.finalize import finalize_run

    decided = decide(ray, stage / "_work", counts, RATIOS, seed=0, radius=16, log=lambda *_: None, **options)
    totals, _ = finalize_run(ray, stage / "_work", stage, decided, 1000, log=lambda *_: None)
    return {"decided": decided, "totals": totals}


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """100k rows in 100 shards: ~1% exact and ~1% near copies across shards, 60/40 en/zh."""
    stage = tmp_path_factory.mktemp("ledger") / "ingest"
    counts = write_ledger(stage / "_work", 100_000)
    return stage, counts


def test_a_100k_row_ledger_gets_the_global_algorithms_decisions_row_for_row(ledger, ray_local):
    stage, counts = ledger
    result = decide_and_finalize(ray_local, stage, counts, partitions=4, group_rows=15_000)
    dedup = result["decided"]["dedup"]
    assert dedup["method"] == "bands" and dedup["groups"] == 7 and dedup["partitions"] == 4
    oracle = oracle_decisions(stage, RATIOS, seed=0)
    assert distributed_decisions(stage) == oracle
    reasons = [r for r in oracle.values() if r]
    assert sum(r.startswith("duplicate_of") for r in reasons) == dedup["exact_duplicates"] + dedup["near_duplicates"]
    assert dedup["exact_duplicates"] > 500 and dedup["near_duplicates"] > 500
    # the quota is exact: the kept Chinese share is within one row of its target
    kept = result["decided"]["mix"]["kept"]
    assert abs(kept["zh"] - 0.227 / 0.773 * kept["en"]) <= 1


def test_sampled_bit_tables_find_the_planted_near_copies_at_their_computed_recall(tmp_path, ray_local):
    stage = tmp_path / "ingest"
    counts = write_ledger(stage / "_work", 30_000, seed=3)
    result = decide_and_finalize(ray_local, stage, counts, search="lsh", recall=0.99, partitions=3)
    dedup = result["decided"]["dedup"]
    assert dedup["method"] == "lsh" and dedup["recall"] >= 0.99 and len(dedup["band_bits"]) == 1
    oracle = oracle_decisions(stage, RATIOS, seed=0)
    near = {k for k, r in oracle.items() if r and r.startswith("duplicate_of")}
    found = {k for k, r in distributed_decisions(stage).items() if r and r.startswith("duplicate_of")}
    assert found <= near  # sampled tables never invent a pair: every pair is checked by its true distance
    assert len(found) >= 0.99 * len(near)


def test_the_plan_switches_to_sampled_tables_where_exact_bands_would_compare_quadratically():
    from pipelines.ingest.partitioned_dedup import pair_recall, plan_bands

    assert plan_bands(100_000, 16).method == "bands"
    big = plan_bands(100_000_000, 16)  # the default radius at 10^8 rows runs, approximately, with its recall
    assert big.method == "lsh" and big.recall >= 0.99
    assert big.recall == pytest.approx(pair_recall(16, len(big.positions[0]), len(big.positions)))
    assert plan_bands(100_000_000, 16, search="exact").method == "bands"
    with pytest.raises(ValueError, match="near_duplicate_search"):
        plan_bands(10, 16, search="fuzzy")


def test_the_driver_never_reads_a_row(tmp_path, ray_local, monkeypatch):
    """Every read of rows (samples, kept rows, partition files) made to fail in the driver process: the
    decisions and finalize still run, because only Ray tasks read them."""
    import polars as pl

    from pipelines.ingest import partitions

    stage = tmp_path / "ingest"
    counts = write_ledger(stage / "_work", 5_000)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the driver read rows: {args[:1]}")

    for target, name in ((pq, "read_table"), (pq, "ParquetFile"), (pl, "read_parquet"), (pl, "scan_parquet"),
                         (partitions, "read_partition"), (partitions, "read_whole")):
        monkeypatch.setattr(target, name, refuse)
    result = decide_and_finalize(ray_local, stage, counts, partitions=2, group_rows=2_000)
    assert result["totals"]["rows"] == 5_000
    monkeypatch.undo()
    assert distributed_decisions(stage) == oracle_decisions(stage, RATIOS, seed=0)


RESUME_SCRIPT = """
import json, sys
import ray
from pipelines.ingest.decide import decide
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
counts = json.load(open(sys.argv[2]))
decide(ray, sys.argv[1], counts, {"en": 0.773, "zh": 0.227}, seed=0, radius=16, partitions=12, group_rows=4000,
       log=lambda *_: None)
"""


def test_a_driver_killed_in_the_decision_phase_resumes_from_the_last_finished_partition(tmp_path, ray_local):
    stage = tmp_path / "ingest"
    counts = write_ledger(stage / "_work", 60_000, seed=5)
    (tmp_path / "counts.json").write_text(json.dumps(counts))
    done = stage / "_work" / "decide" / "collapse"
    driver = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(stage / "_work"), str(tmp_path / "counts.json")],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    deadline = time.time() + 180
    while not list(done.glob("*.json")) and driver.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    finished = {p.name: p.stat().st_mtime_ns for phase in ("map", "exact", "collapse")
                for p in (stage / "_work" / "decide" / phase).glob("*.json")}
    assert any(name for name in finished) and len(list(done.glob("*.json"))) < 12, "the kill missed the phase"
    time.sleep(2)  # let tasks the killed driver left running finish or die
    finished = {p: p.stat().st_mtime_ns for phase in ("map", "exact", "collapse")
                for p in (stage / "_work" / "decide" / phase).glob("*.json")}
    result = decide_and_finalize(ray_local, stage, counts, partitions=12, group_rows=4000)
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())  # not redone
    assert result["totals"]["rows"] == 60_000
    assert distributed_decisions(stage) == oracle_decisions(stage, RATIOS, seed=0)
