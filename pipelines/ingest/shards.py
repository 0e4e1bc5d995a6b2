"""The pairs contract on disk: webdataset tars with a parquet index each, written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.manifest import write_atomic, write_parquet_atomic

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


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile's RECORDSIZE: an archive ends padded to a whole record


def ustar_member(name: str, data: bytes) -> bytes:
    """One regular file as a ustar archive member (header + data padded to 512 bytes), byte for byte what
    `tarfile` writes for a TarInfo with mode 0o644, mtime 0 and no owner (so identical inputs give
    identical shards), built directly: tarfile's header code is most of the time of writing a shard."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"pairs shard member name {name!r} is longer than ustar's 100 bytes")
    header = bytearray(_BLOCK)
    header[0:len(encoded)] = encoded
    header[100:108] = b"0000644\0"
    header[108:116] = header[116:124] = b"0000000\0"  # uid, gid
    header[124:136] = b"%011o\0" % len(data)
    header[136:148] = b"00000000000\0"  # mtime 0
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[156:157] = b"0"  # a regular file
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % _BLOCK)


def ustar_archive(members: list[bytes]) -> bytes:
    """Members joined and closed as tarfile closes an archive: two zero blocks, then padding to a record."""
    body = b"".join(members) + b"\0" * (2 * _BLOCK)
    return body + b"\0" * (-len(body) % _RECORD)


def write_pairs_shard(out_dir: str, index: int, rows: list[dict], images: dict[str, bytes]) -> str:
    """Write shard `index` (tar + parquet index) unless it is already complete; return its tar path.

    The parquet index is renamed into place last, so its presence marks a finished shard.
    """
    out = Path(out_dir)
    name = shard_name(index)
    tar_path, index_path = out / f"{name}.tar", out / f"{name}.parquet"
    if tar_path.exists() and index_path.exists():
        return str(tar_path)
    members = []
    for row in rows:
        key = row["key"]
        meta = {field: row[field] for field in SAMPLE_JSON_FIELDS}
        members += [ustar_member(f"{key}.jpg", images[key]), ustar_member(f"{key}.txt", row["caption"].encode()),
                    ustar_member(f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())]
    write_atomic(tar_path, ustar_archive(members))
    table = pa.Table.from_pylist([{f: row[f] for f in PAIRS_INDEX_SCHEMA.names} for row in rows], schema=PAIRS_INDEX_SCHEMA)
    write_parquet_atomic(table, index_path)
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
