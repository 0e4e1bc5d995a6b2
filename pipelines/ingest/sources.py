"""Read URL-list sources into one table with a stable row id, and refuse rows that cannot be fetched."""
from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from catalog.cards import (
    UnknownCardError,
    UnknownLayoutError,
    card_kind,
    get_card,
    load_cards,
    pairs_layout,
    select_cards,
)
from pipelines.ingest.fetch_guard import FetchPolicy

SOURCE_SCHEMA = pa.schema(
    [("row_id", pa.string()), ("source", pa.string()), ("url", pa.string()), ("caption", pa.string()),
     ("problem", pa.string())]  # set where the row's url or caption was a value of another type
)


FORMATS = ("parquet", "tsv", "csv", "jsonl", "json")
HEADERLESS_FORMATS = ("tsv", "csv")


class SourceConfigError(ValueError):
    """An `ingest.sources` entry that names no readable URL list; `key` is the entry's key at fault."""

    def __init__(self, key: str | None, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Source:
    """One URL list file (local or fsspec URL): its format and the names of its URL and caption columns."""

    path: str
    url_col: str = "url"
    caption_col: str = "caption"
    name: str | None = None
    format: str = "parquet"
    columns: tuple[str, ...] | None = None  # the names of a headerless csv/tsv's columns, in file order
    part: int | None = None  # the file's index among the files a card source's path matched

    CONFIG_KEYS: ClassVar[tuple[str, ...]] = (
        "path", "card", "layout", "url_col", "caption_col", "name", "format", "columns")

    def __post_init__(self):
        if self.format not in FORMATS:
            raise SourceConfigError("format", f"{self.format!r}; expected one of {', '.join(FORMATS)}")
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))
            if self.format not in HEADERLESS_FORMATS:
                raise SourceConfigError("columns", f"names the columns of a headerless csv or tsv; "
                                                   f"a {self.format} file names its own")
            lost = [c for c in (self.url_col, self.caption_col) if c not in self.columns]
            if lost:
                raise SourceConfigError("columns", f"{list(self.columns)} lacks {', '.join(map(repr, lost))}; "
                                                   "name the URL and caption columns among them")

    @property
    def label(self) -> str:
        return self.name or Path(self.path.rstrip("/")).stem

    @property
    def row_prefix(self) -> str:
        """What this source's row ids start with: `label`, or `label:part` for one file of a card source."""
        return self.label if self.part is None else f"{self.label}:{self.part}"

    @classmethod
    def from_config(cls, entry: dict, missing_ok: bool = False) -> list[Source]:
        """The sources one `ingest.sources` entry names.

        `{path, url_col, caption_col, ...}` is one source, read as given. `{card: NAME, path: ...}`
        takes the format and column names from the card's metadata layout (its default, or
        `layout:`), and is one source per file the path or glob matches, each named after the card
        and numbered so row ids stay unique across files. Keys given beside `card` override the card.
        `missing_ok`: a card source whose glob matches nothing yet (an earlier stage writes its files) is no
        source rather than an error.
        """
        unknown = sorted(set(entry) - set(cls.CONFIG_KEYS))
        if unknown:
            raise SourceConfigError(None, f"unknown key(s) {unknown}; expected some of {list(cls.CONFIG_KEYS)}")
        settings = dict(entry)
        card_name = settings.pop("card", None)
        if card_name is None:
            if "layout" in settings:
                raise SourceConfigError("layout", "only a card source has layouts; add card: NAME or drop layout")
            return [cls(**settings)]
        card = _pairs_card(card_name)
        try:
            layout = pairs_layout(card, settings.pop("layout", None))
        except UnknownLayoutError as err:
            raise SourceConfigError("layout", str(err)) from err
        path = settings.pop("path", None)
        if not path:
            raise SourceConfigError(
                "path", f"card {card_name!r} says how to read its files, not where yours are; add path: "
                        f"(a local path, fsspec URL or glob of the {layout['format']} files from {layout['where']})")
        resolved = {"name": card_name, "url_col": layout["url_col"], "caption_col": layout["caption_col"],
                    "format": layout["format"], **settings}
        if ("columns" not in settings and resolved["format"] == layout["format"]
                and layout.get("header", True) is False):
            resolved["columns"] = layout["columns"]
        files = expand_paths(path)
        if not files and not missing_ok:
            raise SourceConfigError(
                "path", f"{path!r} matches no file; give an existing file, or a glob such as "
                        f"/data/{card_name}/*.{layout['format']} (local or any fsspec URL)")
        return [cls(path=file, part=part, **resolved) for part, file in enumerate(files)]


def _pairs_card(name: str) -> dict:
    cards = load_cards()
    pairs = ", ".join(sorted(select_cards(cards, kind="pairs")))
    try:
        card = get_card(name)
    except UnknownCardError as err:
        raise SourceConfigError("card", f"{name!r} is not a card; caption-pair cards: {pairs} "
                                        "(see `loom catalog list --kind pairs`)") from err
    if card_kind(card) != "pairs":
        raise SourceConfigError("card", f"{name!r} is a {card_kind(card)} card, read by its adapter in render:, "
                                        f"not a URL list; ingest reads the caption-pair cards: {pairs}")
    return card


def expand_paths(path: str) -> list[str]:
    """The files a local path, fsspec URL or glob names, sorted; empty when nothing matches."""
    try:
        fs, fs_path = fsspec.core.url_to_fs(path)
        if any(char in fs_path for char in "*?["):
            found = fs.glob(fs_path, detail=True)
        else:
            found = {fs_path: fs.info(fs_path)} if fs.exists(fs_path) else {}
    except (ValueError, ImportError, OSError) as err:
        raise SourceConfigError("path", f"{path!r} cannot be listed ({err})") from err
    files = sorted(name for name, info in found.items() if info.get("type") == "file")
    if isinstance(fs, LocalFileSystem):
        return files
    return [fs.unstrip_protocol(name) for name in files]


def read_source(source: Source) -> pa.Table:
    """Load a source as (row_id, source, url, caption, problem); a url or caption that is not text
    (a number, a list) becomes null and the row's `problem` says so: url_not_text, caption_not_text."""
    try:
        table = _READERS[source.format](source)
    except UnicodeDecodeError as err:
        raise _not_utf8(source, err) from err
    except (pa.ArrowInvalid, json.JSONDecodeError) as err:
        if "invalid UTF8" in str(err):  # Arrow's CSV reader checks text columns itself
            raise ValueError(f"source {source.path}: not UTF-8 text ({err}); save it as UTF-8") from err
        raise ValueError(f"source {source.path}: not readable as {source.format} ({err})") from err
    for col, what in ((source.url_col, "url_col"), (source.caption_col, "caption_col")):
        if col not in table.column_names:
            raise ValueError(
                f"source {source.path}: no column {col!r} (set {what} to one of {table.column_names})"
            )
    n = table.num_rows
    prefix = source.row_prefix
    try:  # Arrow's JSON reader passes invalid UTF-8 through; it shows when the text is decoded
        urls, url_typed = _as_strings(table[source.url_col])
        captions, caption_typed = _as_strings(table[source.caption_col])
    except UnicodeDecodeError as err:
        raise _not_utf8(source, err) from err
    problems = [("url_not_text" if u else None) or ("caption_not_text" if c else None)
                for u, c in zip(url_typed, caption_typed)]
    return pa.table(
        {"row_id": [f"{prefix}:{i}" for i in range(n)], "source": [source.label] * n,
         "url": urls, "caption": captions, "problem": problems},
        schema=SOURCE_SCHEMA,
    )


def _not_utf8(source: Source, err: UnicodeDecodeError) -> ValueError:
    return ValueError(f"source {source.path}: not UTF-8 text ({err.reason} at byte {err.start} of a field or "
                      "line); save it as UTF-8")


def _read_parquet(source: Source) -> pa.Table:
    with fsspec.open(source.path, "rb") as f:
        return pq.read_table(f)


def _read_delimited(source: Source) -> pa.Table:
    tab = source.format == "tsv"
    # TSV lists (CC3M, CC12M) do not quote fields, so a '"' inside a caption is text, not a quote.
    parse = pa_csv.ParseOptions(delimiter="\t" if tab else ",", quote_char=False if tab else '"')
    read = pa_csv.ReadOptions(column_names=list(source.columns) if source.columns else None)
    # Strings stay strings: a caption such as "1984" must not turn into a number and then a null.
    convert = pa_csv.ConvertOptions(column_types={source.url_col: pa.string(), source.caption_col: pa.string()})
    with fsspec.open(source.path, "rb", compression="infer") as f:
        return pa_csv.read_csv(f, read_options=read, parse_options=parse, convert_options=convert)


def _read_jsonl(source: Source) -> pa.Table:
    try:
        with fsspec.open(source.path, "rb", compression="infer") as f:
            return pa_json.read_json(f)
    except pa.ArrowInvalid:  # a column whose type changes from row to row: read it record by record
        with fsspec.open(source.path, "rt", encoding="utf-8", compression="infer") as f:
            records = [json.loads(line) for line in f if line.strip()]
        if not all(isinstance(record, dict) for record in records):
            raise
        return _columns_table(records)


def _read_json(source: Source) -> pa.Table:
    """One JSON document: a list of records, or a mapping of equal-length column lists (SBU Captions)."""
    with fsspec.open(source.path, "rt", encoding="utf-8", compression="infer") as f:
        document = json.load(f)
    if isinstance(document, dict) and document and all(isinstance(v, list) for v in document.values()):
        lengths = {len(v) for v in document.values()}
        if len(lengths) != 1:
            raise ValueError(f"source {source.path}: column lists of different lengths {sorted(lengths)}")
        columns = document
    elif isinstance(document, list) and all(isinstance(record, dict) for record in document):
        return _columns_table(document)
    else:
        raise ValueError(f"source {source.path}: expected a JSON list of records or a mapping of column lists")
    return _typed_columns(columns)


def _columns_table(records: list[dict]) -> pa.Table:
    names = list(dict.fromkeys(key for record in records for key in record))
    return _typed_columns({name: [record.get(name) for record in records] for name in names})


def _typed_columns(columns: dict[str, list]) -> pa.Table:
    """Columns of any JSON values, text kept as text and anything else as its JSON, marked."""
    return pa.table({name: pa.array([v if v is None or isinstance(v, str) else _NOT_TEXT + json.dumps(v)
                                      for v in values], pa.string()) for name, values in columns.items()})


_READERS = {"parquet": _read_parquet, "tsv": _read_delimited, "csv": _read_delimited,
            "jsonl": _read_jsonl, "json": _read_json}


_NOT_TEXT = "\x00not-text:"  # prefixes a JSON value that was not a string (no URL or caption starts so)


def _as_strings(column: pa.ChunkedArray) -> tuple[list[str | None], list[bool]]:
    """The column's text values, null where a value was not text; and where that was so."""
    values = column.to_pylist()
    typed = [v is not None and (not isinstance(v, str) or v.startswith(_NOT_TEXT)) for v in values]
    return [None if t else v for v, t in zip(values, typed)], typed


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


# C0 and C1 control characters but the whitespace ones (tab, line and form feeds, carriage return), which
# clean_caption turns into spaces: NUL, the ESC that starts an ANSI escape sequence, backspace, DEL...
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
# bidi embeddings and overrides (LRE, RLE, PDF, LRO, RLO) and isolates (LRI, RLI, FSI, PDI): they reorder what
# a reader sees against what a model reads ("Trojan Source"); the plain marks LRM and RLM are kept
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
# the private use areas: no shared meaning, and U+E000 is the mark render splits a prompt from its response at
_PRIVATE_USE = re.compile(r"[\ue000-\uf8ff\U000f0000-\U0010ffff]")
# invisible and meaningless in a caption: byte order marks (zero-width no-break spaces), zero-width spaces,
# word joiners
_INVISIBLE = re.compile(r"[\ufeff\u200b\u2060]")
# zero-width non-joiners and joiners shape emoji sequences and Arabic-script and Indic words: kept between
# two characters that are neither ASCII nor spaces, removed anywhere else
_JOINERS = re.compile(r"(?<=[^\x00-\x7f\s])([\u200c\u200d]+)(?=[^\x00-\x7f\s])|[\u200c\u200d]+")
_BLANK = re.compile(r"[\s\ufeff\u200b\u2060\u200c\u200d]*")


def caption_problem(caption: str | None) -> str | None:
    """Why a caption cannot become training text, or None: 'caption_missing' (null), 'caption_control'
    (a control character: NUL, an ANSI escape sequence's ESC...), 'caption_bidi' (a bidi override, embedding
    or isolate), 'caption_private_use' (a private use code point), 'caption_empty' (nothing but spaces and
    invisible characters). What is harmless is cleaned instead (`clean_caption`)."""
    if caption is None:
        return "caption_missing"
    if _CONTROL.search(caption):
        return "caption_control"
    if not caption.isascii():
        if _BIDI.search(caption):
            return "caption_bidi"
        if _PRIVATE_USE.search(caption):
            return "caption_private_use"
    if _BLANK.fullmatch(caption):
        return "caption_empty"
    return None


def clean_caption(caption: str) -> str:
    """A caption without `caption_problem` as training text: without byte order marks, zero-width spaces and
    stray joiners, NFC-normalised, every run of whitespace one space, none at either end."""
    if not caption.isascii():
        caption = _JOINERS.sub(lambda joiners: joiners.group(1) or "", _INVISIBLE.sub("", caption))
        caption = unicodedata.normalize("NFC", caption)
    return " ".join(caption.split())
