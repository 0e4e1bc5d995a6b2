"""Ingest throughput: plain img2dataset vs `loom ingest` with every filter on, same URL list, one run.

    python bench/ingest.py [--pairs 5000] [--out /tmp/loom-bench-ingest]

A shapes world of N real JPEGs of mixed sizes (96-256 px sides, plus the planted bad rows) is
served over loopback; both contenders fetch the same URL list at the same image size with the
same thread count. Plain img2dataset runs as a user would run it alone (multiprocessing, one
process per core); Loom runs its whole stage (img2dataset on Ray, Ray Data filters, dedup, mix,
shard writing). Images/s counts input URLs per wall-clock second. Issue 3's target: ratio >= 0.9.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--out", default="/tmp/loom-bench-ingest")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()

    from img2dataset import download

    from jobs.ingest import run_ingest
    from pipelines.shapes_world import serve_demo_world, write_demo_data

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    world = out / "world"
    summary = write_demo_data(str(world), seed=0, pair_scenes=args.pairs, train_scenes=0, val_scenes=0)
    rows = summary["urls"]["rows"]
    results = {"urls": rows, "image_size": args.image_size, "threads": args.threads, "cores": os.cpu_count()}

    with serve_demo_world(str(world)):
        started = time.perf_counter()
        download(url_list=str(world / "urls.parquet"), input_format="parquet", url_col="url", caption_col="caption",
                 output_format="webdataset", output_folder=str(out / "plain"), image_size=args.image_size,
                 resize_mode="keep_ratio", resize_only_if_bigger=True, encode_quality=90,
                 processes_count=os.cpu_count(), thread_count=args.threads, number_sample_per_shard=1000,
                 timeout=10, retries=1, compute_hash="sha256", extract_exif=False, enable_wandb=False)
        plain = time.perf_counter() - started

    config = {"ingest": {"sources": [{"path": str(world / "urls.parquet")}], "serve": str(world),
                         "allow_private_network": True, "image_size": args.image_size, "threads": args.threads,
                         "samples_per_shard": 1000, "download_shard_size": 1000}}
    started = time.perf_counter()
    manifest = run_ingest(config, out / "loom", log=lambda *_: None)
    loom = time.perf_counter() - started

    results.update({
        "plain_img2dataset": {"seconds": round(plain, 2), "images_per_s": round(rows / plain, 1)},
        "loom_ingest": {"seconds": round(loom, 2), "images_per_s": round(rows / loom, 1),
                        "kept": manifest["rows_out"], "dropped": manifest["dropped"],
                        "phase_seconds": manifest["phase_seconds"]},  # the rest of the time: starting Ray
        "ratio": round(plain / loom, 3),
    })
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
