"""The data side at N rows: driver memory and wall time of every job after the downloads.

    python bench/scale.py --rows 1000000 [--partitions P] [--out DIR] [--keep]

A synthetic ingest ledger of N rows (pipelines/ingest/synthetic.py: per-shard outputs of
1,000 rows as the per-shard steps leave them; ~1% exact and ~1% near copies, 60/40 en/zh
before the mix) goes through the real code, each job's driver in a process of its own on a
local Ray (started by the job, as `loom` does):
  ingest   the decision phase (exact dedup, near dedup at the default radius, the language
           quota) and finalize (kept rows and a dropped part per shard, the pairs shards), then
           the manifest, as `run_ingest` does after its downloads
  render   the pairs entry of that output into instruction records (`run_render`)
  pack     those records packed for LLaVA-1.5 (`run_pack`, tokenizer trained on its sample)
  report   `loom report` of the run folder
Prints one JSON object: per job the driver's peak RSS (MB) and wall seconds per phase.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LANGUAGES = {"en": 0.773, "zh": 0.227}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: kilobytes


def child_ledger(out: Path, rows: int) -> dict:
    from pipelines.ingest.synthetic import write_ledger

    started = time.perf_counter()
    counts = write_ledger(out / "ingest" / "_work", rows)
    (out / "ledger.json").write_text(json.dumps({"rows_per_shard": counts}))
    return {"seconds": {"write_ledger": round(time.perf_counter() - started, 2)}}


def child_ingest(out: Path, partitions: int | None) -> dict:
    from jobs.ray_runtime import ray_session
    from pipelines.ingest.decide import clear_shuffles, decide
    from pipelines.ingest.figures import download_throughput
    from pipelines.ingest.finalize import finalize_run
    from pipelines.manifest import StageRecord

    stage = out / "ingest"
    work = stage / "_work"
    counts = json.loads((out / "ledger.json").read_text())["rows_per_shard"]
    record = StageRecord("ingest", {"bench": "scale"}, {})
    record.rows_in = sum(counts)
    seconds = {}
    with ray_session(None) as ray:
        started = time.perf_counter()
        decided = decide(ray, work, counts, LANGUAGES, seed=0, radius=16, partitions=partitions, log=lambda *_: None)
        seconds.update({f"decisions.{k}": v for k, v in decided["dedup"]["seconds"].items()})
        seconds["decisions"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        totals, written = finalize_run(ray, work, stage, decided, 1000, log=lambda *_: None)
        clear_shuffles(work)
        seconds["finalize_and_pairs_shards"] = round(time.perf_counter() - started, 2)
    for reason, count in totals["dropped"].items():
        record.drop(reason, count)
    record.rows_out = totals["kept"]
    record.extra.update(shards=[os.path.relpath(shard["path"], stage) for shard in written],
                        shard_rows=[shard["rows"] for shard in written], shard_bytes=[shard["bytes"] for shard in written],
                        dropped_parts="dropped",
                        languages=decided["mix"], dedup=decided["dedup"],
                        figures={**totals["figures"], "download_throughput": download_throughput(totals["download"])})
    record.finish(stage)
    assert totals["rows"] == sum(counts) == totals["kept"] + sum(totals["dropped"].values())
    return {"seconds": seconds, "rows": totals["rows"], "kept": totals["kept"], "dropped": dict(totals["dropped"]),
            "dedup": {k: decided["dedup"][k] for k in ("method", "bands", "band_bits", "recall", "partitions",
                                                       "band_partitions", "candidate_pairs", "near_pairs",
                                                       "exact_duplicates", "near_duplicates")},
            "kept_share": decided["mix"]["kept_share"]}


def child_render(out: Path) -> dict:
    from jobs.render import run_render

    started = time.perf_counter()
    manifest = run_render({"render": {"datasets": [{"adapter": "pairs", "path": str(out / "ingest")}],
                                      "ray": "always"}}, out, log=lambda *_: None)
    return {"seconds": {"render": round(time.perf_counter() - started, 2)}, "records": manifest["rows_out"]}


def child_pack(out: Path) -> dict:
    from jobs.pack import run_pack

    started = time.perf_counter()
    manifest = run_pack({"pack": {"preset": "llava-1.5", "ray": "always",
                                  "outputs": {"pretrain": {"datasets": ["pairs"], "split": "train"}}}},
                        out, log=lambda *_: None)
    output = manifest["outputs"]["pretrain"]
    return {"seconds": {"pack": round(time.perf_counter() - started, 2)}, "samples": output["samples"],
            "sequences": output["sequences"], "fill": round(output["fill"], 4)}


def child_report(out: Path) -> dict:
    from jobs.report import write_report

    started = time.perf_counter()
    write_report(out)
    return {"seconds": {"report": round(time.perf_counter() - started, 2)}}


def child(job: str, out: Path, rows: int, partitions: int | None) -> None:
    result = {"ledger": lambda: child_ledger(out, rows), "ingest": lambda: child_ingest(out, partitions),
              "render": lambda: child_render(out), "pack": lambda: child_pack(out),
              "report": lambda: child_report(out)}[job]()
    result["driver_peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=None, help="hash partitions (default: one per 1M rows, >= 2)")
    parser.add_argument("--out", default=None, help="run folder (default: a fresh one under runs/)")
    parser.add_argument("--jobs", nargs="+", default=["ingest", "render", "pack", "report"])
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out or ROOT / "runs" / f"scale-{args.rows}")
    if args.child:
        child(args.child, out, args.rows, args.partitions)
        return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    result = {"rows": args.rows, "cpus": os.cpu_count(), "jobs": {}}
    try:
        for job in ["ledger", *args.jobs]:
            command = [sys.executable, __file__, "--child", job, "--rows", str(args.rows), "--out", str(out)]
            if args.partitions:
                command += ["--partitions", str(args.partitions)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"bench/scale.py: {job} failed:\n{done.stderr[-4000:]}")
            result["jobs"][job] = json.loads(done.stdout.strip().splitlines()[-1])
            result["jobs"][job]["process_seconds"] = round(time.perf_counter() - started, 2)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
