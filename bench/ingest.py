"""Ingest throughput: plain img2dataset vs `loom ingest` with every filter on, same URL list, one run.

    python bench/ingest.py [--pairs 5000] [--repeats 3] [--out /tmp/loom-bench-ingest]

A shapes world of N real JPEGs of mixed sizes (96-256 px sides, plus the planted bad rows) is
served over loopback by this process; each contender runs as its command-line tool in a
process of its own, on the same URL list, at the same image size, thread count and shard size:

- `img2dataset` alone, as a user runs it (multiprocessing, one process per core);
- `loom ingest --ray-address ADDR` on a Ray cluster already running (how a cluster user runs
  it: the cluster's start is not the job's), the whole stage (screening, img2dataset
  downloads, image filters, global dedup, language mix, pairs shards written);
- `loom ingest` alone, which also starts and stops a local Ray.

The three run in turn, `--repeats` times after one warm-up round that is not counted (the first
start of each tool reads its libraries from disk); the median of each is reported. Images/s counts
input URLs per wall-clock second. Issue 3's target: loom on a running cluster >= 0.9x plain.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
BIN = Path(sys.executable).parent


def timed(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{command[0]} failed ({done.returncode}); see {log}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="/tmp/loom-bench-ingest")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()

    import ray

    from pipelines.shapes_world import serve_demo_world, write_demo_data

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    world = out / "world"
    summary = write_demo_data(str(world), seed=0, pair_scenes=args.pairs, train_scenes=0, val_scenes=0)
    rows = summary["urls"]["rows"]
    cores = os.cpu_count()
    config = out / "loom.yaml"
    config.write_text(json.dumps({"ingest": {
        "sources": [{"path": str(world / "urls.parquet")}], "allow_private_network": True,
        "image_size": args.image_size, "threads": args.threads,
        "samples_per_shard": args.shard_size, "download_shard_size": args.shard_size}}))
    plain_command = [
        str(BIN / "img2dataset"), f"--url_list={world / 'urls.parquet'}", "--input_format=parquet",
        "--url_col=url", "--caption_col=caption", "--output_format=webdataset", f"--image_size={args.image_size}",
        "--resize_mode=keep_ratio", "--resize_only_if_bigger=True", "--encode_quality=90",
        f"--processes_count={cores}", f"--thread_count={args.threads}", f"--number_sample_per_shard={args.shard_size}",
        "--timeout=10", "--retries=1", "--compute_hash=sha256", "--extract_exif=False", "--enable_wandb=False"]
    loom_command = [str(BIN / "loom"), "ingest", str(config)]

    times: dict[str, list[float]] = {"plain_img2dataset": [], "loom_on_running_ray": [], "loom_with_ray_start": []}
    manifests = {}
    with serve_demo_world(str(world)):
        for r in range(-1, args.repeats):  # round -1 warms up
            plain_out = out / f"plain-{r}"
            times["plain_img2dataset"].append(timed(plain_command + [f"--output_folder={plain_out}"],
                                                    out / f"plain-{r}.log"))
            ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
            try:
                address = ray.get_runtime_context().gcs_address
                run = out / f"loom-cluster-{r}"
                times["loom_on_running_ray"].append(timed(loom_command + ["--out", str(run), "--ray-address", address],
                                                          out / f"loom-cluster-{r}.log"))
                manifests["loom_on_running_ray"] = json.loads((run / "ingest" / "manifest.json").read_text())
            finally:
                ray.shutdown()
            run = out / f"loom-local-{r}"
            times["loom_with_ray_start"].append(timed(loom_command + ["--out", str(run)], out / f"loom-local-{r}.log"))
            manifests["loom_with_ray_start"] = json.loads((run / "ingest" / "manifest.json").read_text())
            print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()),
                  file=sys.stderr)
            if r < 0:
                for values in times.values():
                    values.clear()

    median = {name: statistics.median(values) for name, values in times.items()}
    fetched = sum(json.loads(p.read_text())["successes"] for p in (out / "plain-0").glob("*_stats.json"))
    manifest = manifests["loom_on_running_ray"]
    results = {
        "urls": rows, "fetched_by_plain": fetched, "image_size": args.image_size, "threads": args.threads,
        "shard_size": args.shard_size, "cores": cores, "repeats": args.repeats,
        **{name: {"seconds_median": round(median[name], 2), "seconds": [round(t, 2) for t in times[name]],
                  "urls_per_s": round(rows / median[name], 1)} for name in times},
        "loom_kept": manifest["rows_out"], "loom_dropped": manifest["dropped"],
        "loom_phase_seconds": manifest["phase_seconds"],
        "ratio_on_running_ray": round(median["plain_img2dataset"] / median["loom_on_running_ray"], 3),
        "ratio_with_ray_start": round(median["plain_img2dataset"] / median["loom_with_ray_start"], 3),
    }
    print(json.dumps(results, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
