"""What the ingest driver's whole-run decisions cost: dedup (exact + near) and the language mix
over N kept rows held as the driver holds them (jobs/ingest.py DECISION_COLUMNS), per radius.

    python bench/dedup.py [--rows 1000000] [--radius 0 8 16]

Rows are random 256-bit phashes and sha256s (1% exact copies, 1% near copies 4 bits away), so
the banded search sees uniform hashes: real images agree on more low-frequency bits, and the
shapes world needed 6.5x the candidate pairs of uniform hashes at radius 16 (dedup.py). Reports
the frame's bytes per row, the search's counters, seconds and the process's peak RSS growth.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl


def decision_frame(rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 2**63, size=(rows, 4), dtype=np.int64).astype(">u8")
    sha = rng.integers(0, 2**63, size=(rows, 4), dtype=np.int64).astype(">u8")
    copies = rng.choice(rows, size=rows // 50, replace=False)
    exact, near = copies[: rows // 100], copies[rows // 100:]
    sha[exact] = sha[(exact + 1) % rows]
    phash[near] = phash[(near + 1) % rows] ^ np.array([0b1111, 0, 0, 0], dtype=">u8")  # 4 bits apart
    as_bytes = lambda a: pl.Series([bytes(r) for r in a.view(np.uint8).reshape(rows, 32)], dtype=pl.Binary)  # noqa: E731
    return pl.DataFrame({
        "shard": np.arange(rows, dtype=np.int64) // 1000,
        "key": [f"{i:09d}" for i in range(rows)],
        "source": ["laion400m"] * rows,
        "lang": np.where(rng.random(rows) < 0.3, "zh", "en"),
        "sha256": as_bytes(sha),
        "phash": as_bytes(phash),
    }).with_columns(drop_reason=pl.lit(None, pl.String), stage=pl.lit(None, pl.String))


def measure(rows: int, radius: int, seed: int) -> dict:
    """One radius, in this process: the frame's size, then dedup and mix, and the peak RSS they add."""
    from pipelines.ingest.dedup import mark_duplicates
    from pipelines.ingest.mix import apply_mix

    frame = decision_frame(rows, seed)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counters: dict = {}
    started = time.perf_counter()
    decided = mark_duplicates(frame, radius, counters=counters)
    dedup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    apply_mix(decided, {"en": 0.773, "zh": 0.227}, seed=0)
    mix_seconds = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024  # ru_maxrss is KiB on Linux
    return {
        "rows": rows, "radius": radius, "frame_bytes_per_row": round(frame.estimated_size() / rows, 1),
        "peak_rss_growth_bytes_per_row": round(grown / rows, 1),
        "dedup_seconds": round(dedup_seconds, 2), "mix_seconds": round(mix_seconds, 2),
        "exact_duplicates": counters["exact_duplicates"], "near_duplicates": counters["near_duplicates"],
        **{k: counters[k] for k in ("bands", "method", "candidate_pairs", "biggest_bucket")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--radius", type=int, nargs="+", default=[0, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single radius, in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.rows, args.radius[0], args.seed)))
        return
    runs = []
    for radius in args.radius:  # each in a process of its own, so one radius's peak memory does not hide the next's
        done = subprocess.run([sys.executable, __file__, "--one", "--rows", str(args.rows), "--radius", str(radius),
                               "--seed", str(args.seed)], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
