"""Read URL-list sources into one table with a stable row id, and refuse rows that cannot be fetched."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.ingest.fetch_guard import FetchPolicy

SOURCE_SCHEMA = pa.schema(
    [("row_id", pa.string()), ("source", pa.string()), ("url", pa.string()), ("caption", pa.string())]
)


@dataclass(frozen=True)
class Source:
    """One URL list: a parquet file (local or fsspec URL) and the names of its columns."""

    path: str
    url_col: str = "url"
    caption_col: str = "caption"
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.path.rstrip("/")).stem


def read_source(source: Source) -> pa.Table:
    """Load a source as (row_id, source, url, caption); non-string values become null."""
    with fsspec.open(source.path, "rb") as f:
        table = pq.read_table(f)
    for col, what in ((source.url_col, "url_col"), (source.caption_col, "caption_col")):
        if col not in table.column_names:
            raise ValueError(
                f"source {source.path}: no column {col!r} (set {what} to one of {table.column_names})"
            )
    n = table.num_rows
    return pa.table(
        {
            "row_id": [f"{source.label}:{i}" for i in range(n)],
            "source": [source.label] * n,
            "url": _as_strings(table[source.url_col]),
            "caption": _as_strings(table[source.caption_col]),
        },
        schema=SOURCE_SCHEMA,
    )


def _as_strings(column: pa.ChunkedArray) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in column.to_pylist()]


def url_problem(url: str | None, policy: "FetchPolicy") -> str | None:
    """Why a URL must not be fetched ('malformed_url', 'private_network'), or None.

    Literal addresses and localhost are refused here, before any download; host names are
    checked by the workers' fetch guard once resolved, on every redirect hop.
    """
    if not url:
        return "malformed_url"
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return "malformed_url"
    if parts.scheme not in ("http", "https") or not host:
        return "malformed_url"
    if host == "localhost" or host.endswith(".localhost"):
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # a host name: resolved and checked by the fetch guard
    return "private_network" if policy.refusal(host) else None


def caption_problem(caption: str | None) -> str | None:
    if caption is None:
        return "caption_missing"
    if not caption.strip():
        return "caption_empty"
    return None
