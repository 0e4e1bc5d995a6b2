"""The pairs contract on disk: webdataset tars with a parquet index each, written atomically."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PAIRS_INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("row_id", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("lang", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
    ]
)
SAMPLE_JSON_FIELDS = ("url", "source", "lang", "width", "height", "original_width", "original_height", "sha256", "phash")


def shard_name(index: int) -> str:
    return f"pairs-{index:05d}"


def read_tar_spans(tar_path: str, spans: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    """The bytes of each key's member in one tar, from where the member's data starts and its size
    (tarfile's offset_data and size, recorded when the tar was first read): no header is parsed."""
    found: dict[str, bytes] = {}
    with open(tar_path, "rb") as tar:
        for key, (offset, size) in sorted(spans.items(), key=lambda item: item[1][0]):
            tar.seek(offset)
            data = tar.read(size)
            if len(data) != size:
                raise OSError(f"{tar_path}: member {key} ends at byte {offset + len(data)}, expected {offset + size}; "
                              "the download shard changed after it was read: delete the run's _work folder and re-run")
            found[key] = data
    return found


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # identical inputs give byte-identical shards
    tar.addfile(info, io.BytesIO(data))


def write_pairs_shard(out_dir: str, index: int, rows: list[dict], images: dict[str, bytes]) -> str:
    """Write shard `index` (tar + parquet index) unless it is already complete; return its tar path.

    The parquet index is renamed into place last, so its presence marks a finished shard.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = shard_name(index)
    tar_path, index_path = out / f"{name}.tar", out / f"{name}.parquet"
    if tar_path.exists() and index_path.exists():
        return str(tar_path)
    tmp_tar = out / f".{name}.tar.tmp-{os.getpid()}"
    with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as tar:  # short names: no pax headers to build
        for row in rows:
            key = row["key"]
            meta = {field: row[field] for field in SAMPLE_JSON_FIELDS}
            _add(tar, f"{key}.jpg", images[key])
            _add(tar, f"{key}.txt", row["caption"].encode())
            _add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())
    os.replace(tmp_tar, tar_path)
    table = pa.Table.from_pylist([{f: row[f] for f in PAIRS_INDEX_SCHEMA.names} for row in rows], schema=PAIRS_INDEX_SCHEMA)
    tmp_index = out / f".{name}.parquet.tmp-{os.getpid()}"
    pq.write_table(table, tmp_index)
    os.replace(tmp_index, index_path)
    return str(tar_path)


def read_pairs_index(pairs_dir: str) -> pa.Table:
    """Every kept pair of an ingest output, with the tar it lives in."""
    shards_dir = Path(pairs_dir) / "shards"
    tables = []
    for index_path in sorted(shards_dir.glob("pairs-*.parquet")):
        table = pq.read_table(index_path)
        shard = str(index_path.with_suffix(".tar").resolve())
        tables.append(table.append_column("shard", pa.array([shard] * table.num_rows, pa.string())))
    if not tables:
        raise FileNotFoundError(f"{shards_dir}: no pairs shards; run `loom ingest` first")
    return pa.concat_tables(tables)
