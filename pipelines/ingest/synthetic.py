"""A synthetic ingest ledger: per-shard outputs of N rows as the per-shard steps write them, for the
decision phase's tests and bench/scale.py, at sizes no demo server could fetch on one machine.

Row r's hashes are functions of (seed, r), so any shard can name a copy of a row in another
shard without a global table: about 1% of rows are exact copies (the sha256 and phash of an
earlier row), 1% near copies (an earlier row's phash with 1 to 12 bits flipped), 60/40
English/Chinese before the mix, and a few rows already dropped before the decisions (a
caption refused at screen, an HTTP 404 at download). Every kept row points at the same small
JPEG in one tar, so finalize and the pairs writer read real bytes.
"""
from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.ingest.download import SHARD_DIGITS, shard_stem
from pipelines.ingest.partitions import mix64
from pipelines.ingest.samples import SAMPLES_SCHEMA

EXACT_SHARE, NEAR_SHARE, ZH_SHARE = 0.01, 0.01, 0.4
SCREENED_SHARE, FAILED_SHARE = 0.02, 0.03


def _words(seed: int, rows: np.ndarray, salt: int) -> np.ndarray:
    """4 pseudo-random uint64 words per row, shape (n, 4), a function of (seed, row, salt) only."""
    base = rows.astype(np.uint64) * np.uint64(8) + np.uint64(salt * 4)
    return np.stack([mix64(mix64(base + np.uint64(w)) ^ np.uint64(seed)) for w in range(4)], axis=1)


def _hex(words: np.ndarray) -> pa.Array:
    raw = words.astype(">u8").tobytes()
    return pa.array([raw[i * 32:(i + 1) * 32].hex() for i in range(len(words))], pa.string())


def shard_rows(seed: int, shard: int, shard_size: int, total: int, image: tuple[str, int, int]) -> pa.Table:
    """The rows of one download shard (SAMPLES_SCHEMA) as the per-shard steps leave them."""
    first = shard * shard_size
    rows = np.arange(first, min(first + shard_size, total), dtype=np.int64)
    n = len(rows)
    draw = _words(seed, rows, salt=7)  # the row's dice: kind of copy, language, fate
    u = (draw >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # (n, 4) uniforms
    source_rows = (draw[:, 3] % np.maximum(rows, 1).astype(np.uint64)).astype(np.int64)  # an earlier row
    exact = (u[:, 0] < EXACT_SHARE) & (rows > 0)
    near = (u[:, 0] >= EXACT_SHARE) & (u[:, 0] < EXACT_SHARE + NEAR_SHARE) & (rows > 0)
    sha_of = np.where(exact, source_rows, rows)
    phash_of = np.where(exact | near, source_rows, rows)
    sha = _words(seed, sha_of, salt=1)
    phash = _words(seed, phash_of, salt=2)
    flips = 1 + (draw[:, 2] % np.uint64(12)).astype(np.int64)
    for k in np.flatnonzero(near):
        positions = np.random.default_rng([seed, int(rows[k])]).choice(256, flips[k], replace=False)
        for p in positions:
            phash[k, p // 64] ^= np.uint64(1) << np.uint64(63 - p % 64)
    lang = np.where(u[:, 1] < ZH_SHARE, "zh", "en")
    screened = u[:, 2] < SCREENED_SHARE
    failed = ~screened & (u[:, 2] < SCREENED_SHARE + FAILED_SHARE)
    digits = math.ceil(math.log10(shard_size)) if shard_size > 1 else 1
    keys = [None if s else f"{shard * 10 ** digits + i:0{digits + SHARD_DIGITS}d}"
            for i, s in enumerate(screened.tolist())]
    fetched = ~screened & ~failed
    tar_path, offset, size = image
    captions = [("一只红色的圆形在蓝色方块旁边" if z else "a red circle next to a blue square, seen from above")
                for z in (lang == "zh").tolist()]
    side = 200 + (draw[:, 1] % np.uint64(600)).astype(np.int32)

    def where(mask, values, kind):
        return pa.array([v if m else None for m, v in zip(mask.tolist(), values)], kind)

    return pa.table({
        "shard": np.full(n, shard, np.int64),
        "row_id": [f"synthetic:0:{r}" for r in rows.tolist()],
        "source": ["synthetic"] * n,
        "url": [f"http://images.example/{r}.jpg" for r in rows.tolist()],
        "caption": captions,
        "lang": lang.tolist(),
        "lang_confidence": np.full(n, 0.99, np.float32),
        "key": pa.array(keys, pa.string()),
        "status": where(~screened, ["success" if f else "failed_to_download" for f in fetched.tolist()], pa.string()),
        "error_message": where(failed, ["HTTP Error 404: Not Found"] * n, pa.string()),
        "width": where(fetched, [224] * n, pa.int32()),
        "height": where(fetched, side.tolist(), pa.int32()),
        "original_width": where(fetched, (side * 2).tolist(), pa.int32()),
        "original_height": where(fetched, (side * 2).tolist(), pa.int32()),
        "sha256": where(fetched, _hex(sha).to_pylist(), pa.string()),
        "phash": where(fetched, _hex(phash).to_pylist(), pa.string()),
        "download_tar": where(fetched, [tar_path] * n, pa.string()),
        "jpg_offset": where(fetched, [offset] * n, pa.int64()),
        "jpg_size": where(fetched, [size] * n, pa.int64()),
        "stage": where(screened | failed, ["screen" if s else "download" for s in screened.tolist()], pa.string()),
        "drop_reason": where(screened | failed, ["caption_empty" if s else "http_404" for s in screened.tolist()],
                             pa.string()),
    }, schema=SAMPLES_SCHEMA)


def write_ledger(work: str | Path, rows: int, shard_size: int = 1000, seed: int = 0) -> list[int]:
    """`_work/samples/<shard>.parquet` for `rows` rows in shards of `shard_size`, and the tar their
    images point at; returns the rows of each shard."""
    from PIL import Image

    work = Path(work)
    (work / "samples").mkdir(parents=True, exist_ok=True)
    tar_path = work / "download" / "synthetic.tar"
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (224, 224), (200, 40, 40)).save(buffer, "JPEG", quality=90)
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("image.jpg")
        info.size = len(buffer.getvalue())
        tar.addfile(info, io.BytesIO(buffer.getvalue()))
    with tarfile.open(tar_path) as tar:
        member = tar.getmember("image.jpg")
        image = (str(tar_path), member.offset_data, member.size)
    counts = []
    for shard in range(math.ceil(rows / shard_size)):
        table = shard_rows(seed, shard, shard_size, rows, image)
        pq.write_table(table, work / "samples" / f"{shard_stem(shard)}.parquet")
        counts.append(table.num_rows)
    return counts
