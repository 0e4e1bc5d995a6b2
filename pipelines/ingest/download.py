"""One download shard through img2dataset's own downloader, resizer and webdataset writer.

Loom schedules the shards itself (as Ray Data blocks, so the filters of a finished shard run
while others download) and hands each one to img2dataset's `Downloader`: the same retries,
timeouts, resize modes, hashing and webdataset output as `img2dataset.download`, without its
shard reader and stats-logger process.

Each attempt writes into a folder of its own (`attempts/{id:05d}-<token>/`), renamed to
`{id:05d}/` once img2dataset has written its `{id:05d}_stats.json` (after closing the tar).
The rename is atomic and the first attempt to finish wins: a zombie attempt (a worker its
driver gave up on) can never interleave its files with its retry's, and a reader sees a
shard's folder whole or not at all.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_DIGITS = 5  # shard files are {id:05d}.tar, as img2dataset names them
# the input columns img2dataset keeps with each sample (in its json and parquet); url last, as its reader does
KEPT_COLUMNS = ["row_id", "source", "lang", "caption", "url"]
STATUS_COLUMNS = ["key", "status", "error_message", "width", "height", "original_width", "original_height", "sha256"]


@dataclass(frozen=True)
class DownloadConfig:
    """The img2dataset settings of one ingest run."""

    image_size: int = 224
    resize_mode: str = "keep_ratio"
    encode_quality: int = 90
    threads: int = 32
    timeout: float = 10
    retries: int = 1
    samples_per_shard: int = 1000  # sizes the keys: img2dataset reserves digits for this many per shard
    # X-Robots-Tag directives by which a publisher opts an image out (img2dataset's default list);
    # a refused image is dropped as 'robots_opt_out'; () fetches regardless
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")


def shard_stem(shard_id: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}"


def shard_folder(folder: str | Path, shard_id: int) -> Path:
    """Where a finished shard's tar, parquet and stats are."""
    return Path(folder) / shard_stem(shard_id)


def is_finished(folder: str | Path, shard_id: int) -> bool:
    return (shard_folder(folder, shard_id) / f"{shard_stem(shard_id)}_stats.json").exists()


def download_shard(rows: pa.Table, shard_id: int, folder: str | Path, config: DownloadConfig) -> None:
    """Fetch `rows` (KEPT_COLUMNS) into `folder/{id}/`: `{id}.tar` + `.parquet` + `_stats.json`, unless finished."""
    from img2dataset.downloader import Downloader
    from img2dataset.resizer import Resizer
    from img2dataset.writer import WebDatasetSampleWriter

    folder = Path(folder)
    if is_finished(folder, shard_id):
        return
    attempt = folder / "attempts" / f"{shard_stem(shard_id)}-{uuid.uuid4().hex[:12]}"
    inputs = attempt / "_input"
    inputs.mkdir(parents=True)
    shard_file = inputs / f"{shard_stem(shard_id)}.arrow"
    with pa.OSFile(str(shard_file), "wb") as sink, pa.ipc.new_file(sink, rows.select(KEPT_COLUMNS).schema) as out:
        out.write_table(rows.select(KEPT_COLUMNS))
    resizer = Resizer(image_size=config.image_size, resize_mode=config.resize_mode, resize_only_if_bigger=True,
                      encode_quality=config.encode_quality, encode_format="jpg")
    downloader = Downloader(
        sample_writer_class=WebDatasetSampleWriter, resizer=resizer, thread_count=config.threads,
        save_caption=True, extract_exif=False, output_folder=str(attempt), column_list=KEPT_COLUMNS,
        timeout=config.timeout, number_sample_per_shard=config.samples_per_shard, oom_shard_count=SHARD_DIGITS,
        compute_hash="sha256", verify_hash_type=None, encode_format="jpg", retries=config.retries,
        user_agent_token=None, disallowed_header_directives=list(config.disallowed_header_directives) or None,
    )
    downloader.download_shard((shard_id, str(shard_file)))  # removes the input file when done
    if not (attempt / f"{shard_stem(shard_id)}_stats.json").exists():
        raise RuntimeError(f"img2dataset did not finish download shard {shard_stem(shard_id)} (no stats file in "
                           f"{attempt}); the shard is fetched again")
    shutil.rmtree(inputs, ignore_errors=True)
    try:
        os.rename(attempt, shard_folder(folder, shard_id))  # atomic: the shard appears whole
    except OSError:
        if not is_finished(folder, shard_id):
            raise
        shutil.rmtree(attempt, ignore_errors=True)  # another attempt finished first: its files stand


def read_shard(folder: str | Path, shard_id: int) -> pa.Table:
    """A finished shard: one row per URL it was given (its status, sizes, hash) plus the image bytes
    (`jpg`, null where the fetch failed), the tar it is in and where in that tar the bytes lie
    (`jpg_offset`, `jpg_size`), so a later step reads them back without parsing the tar again."""
    stem = shard_folder(folder, shard_id) / shard_stem(shard_id)
    statuses = pq.read_table(f"{stem}.parquet", columns=KEPT_COLUMNS + STATUS_COLUMNS)
    images: dict[str, tuple[bytes, int, int]] = {}
    with tarfile.open(f"{stem}.tar") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                images[member.name[: -len(".jpg")]] = (tar.extractfile(member).read(), member.offset_data, member.size)
    found = [images.get(k) for k in statuses["key"].to_pylist()]
    return (statuses.append_column("jpg", pa.array([f and f[0] for f in found], pa.binary()))
            .append_column("download_tar", pa.array([f"{stem}.tar"] * statuses.num_rows, pa.string()))
            .append_column("jpg_offset", pa.array([f and f[1] for f in found], pa.int64()))
            .append_column("jpg_size", pa.array([f and f[2] for f in found], pa.int64())))


def clear_unfinished(folder: str | Path) -> list[str]:
    """Remove what earlier runs' attempts left unfinished (a killed job's, a lost worker's); return their names."""
    attempts = Path(folder) / "attempts"
    removed = sorted(path.name for path in attempts.iterdir()) if attempts.exists() else []
    shutil.rmtree(attempts, ignore_errors=True)
    return removed


def finished_stats(folder: str | Path, shard_id: int) -> list[float] | None:
    """img2dataset's stats of a finished shard: [start time, end time, URL count, seconds], or None."""
    path = shard_folder(folder, shard_id) / f"{shard_stem(shard_id)}_stats.json"
    if not path.exists():
        return None
    stats = json.loads(path.read_text())
    return [stats[key] for key in ("start_time", "end_time", "count", "duration")]
