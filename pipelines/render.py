"""Canonical dataset records → instruction records (the instructions contract) through templates."""
from __future__ import annotations

import collections
import contextlib
import functools
import gc
import json
import operator
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.manifest import atomic_path, read_manifest, write_parquet_atomic
from templates.brevity import BrevityDraw
from templates.library import SET_MARK, TemplateRefused, render_for_record

IMAGE_REF = pa.struct([
    ("shard", pa.string()), ("key", pa.string()), ("path", pa.string()), ("url", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()),
    # a named image folder `path` is relative to (the render manifest's image_roots); null: relative to the run folder
    ("root", pa.string()),
])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
INSTRUCTIONS_SCHEMA = pa.schema([
    ("id", pa.string()), ("dataset", pa.string()), ("task", pa.string()), ("split", pa.string()),
    ("lang", pa.string()), ("template_id", pa.string()), ("brevity", pa.string()),
    ("images", pa.list_(IMAGE_REF)), ("messages", pa.list_(MESSAGE)),
    # for scoring held-out questions: every reference answer, and the kind of question
    ("answers", pa.list_(pa.string())), ("question_type", pa.string()),
])


def run_folder(render_dir: str | Path) -> Path:
    """The run folder a render output lives in, the one above render/: its run-relative image references
    (`ingest/pairs/00000.tar`) start there."""
    return Path(render_dir).resolve().parent


def image_ref(image: dict) -> dict:
    return {field: image.get(field) for field in IMAGE_REF.names}


def render_record(record: dict, seed: int, template_id: str | None = None) -> dict:
    """One instruction record: a template drawn for this record (or the one pinned) applied to it."""
    template, messages = render_for_record(record, seed, template_id)
    frames = record.get("frames")
    return {
        "id": record["id"],
        "dataset": record["dataset"],
        "task": record["task"],
        "split": record["split"],
        "lang": record["lang"],
        "template_id": template.id,
        "brevity": template.brevity,
        "images": [image_ref(image) for image in frames] if frames else [image_ref(record["image"])],
        "messages": messages,
        "answers": record.get("answers"),
        "question_type": record.get("question_type"),
    }


def write_instructions(rows: list[dict], path: Path) -> None:
    """Write instruction rows (dicts of the contract's columns) to one file atomically."""
    write_table(pa.Table.from_pylist(rows, schema=INSTRUCTIONS_SCHEMA), path)


def write_table(table: pa.Table, path: Path) -> None:
    """Write one instructions file atomically."""
    write_parquet_atomic(table, path)


# the table's schema metadata key under which render_table says what it dropped (kept in the parquet file)
DROPPED_KEY = b"loom.dropped"


def render_table(records: list[dict], seed: int, template_id: str | None = None,
                 brevity: list[str] | None = None) -> pa.Table:
    """The instruction records of many canonical records, built column by column: pyarrow converts
    each column's Python values in one call (a row dict per record and pyarrow's row conversion cost
    as much again as the rendering). `brevity`, one label per record (templates/brevity.py), draws each
    record's template among those of its label; without it, among the short and open ones alike.

    A record its template refuses (a bound crossed, an error on its values: TemplateRefused) is left
    out, never the whole table: `dropped_counts(table)` gives the reasons and a message for each."""
    rendered, refused = [], []
    labels = brevity if brevity is not None else [None] * len(records)
    for record, label in zip(records, labels, strict=True):
        try:
            rendered.append(render_for_record(record, seed, template_id, label))
        except TemplateRefused as err:
            rendered.append(None)
            refused.append(err)
    if refused:
        records = [record for record, done in zip(records, rendered) if done is not None]
        rendered = [done for done in rendered if done is not None]
    columns = {name: [record.get(name) for record in records]
               for name in ("id", "dataset", "task", "split", "lang", "answers", "question_type")}
    columns["template_id"] = [template.id for template, _ in rendered]
    columns["brevity"] = [template.brevity for template, _ in rendered]
    columns["images"] = [record.get("frames") or [record["image"]] for record in records]
    columns["messages"] = [messages for _, messages in rendered]
    table = pa.Table.from_arrays([pa.array(columns[f.name], f.type) for f in INSTRUCTIONS_SCHEMA],
                                 schema=INSTRUCTIONS_SCHEMA)
    counts = collections.Counter(err.reason for err in refused)
    examples = {}
    for err in refused:
        examples.setdefault(err.reason, str(err))
    return table.replace_schema_metadata({DROPPED_KEY: json.dumps({"counts": counts, "examples": examples})})


def dropped_counts(table: pa.Table) -> tuple[dict[str, int], dict[str, str]]:
    """What `render_table` left out of `table` (or of the file it was written to): records by reason, and
    the first refusal's message for each reason."""
    metadata = (table.schema.metadata or {}).get(DROPPED_KEY)
    dropped = json.loads(metadata) if metadata else {}
    return dropped.get("counts", {}), dropped.get("examples", {})


@contextlib.contextmanager
def collector_paused():
    """Python's cycle collector off while millions of small acyclic dicts are built: it would otherwise
    scan them again and again (measured: half the time of reading a 200k-question VQAv2 file)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def part_name(stem: str, n: int, parts: int) -> str:
    """The file name of part `n` of `parts` of one rendered entry (`stem`: `00-vizwiz-train`)."""
    return f"{stem}.parquet" if parts == 1 else f"{stem}-{n:05d}.parquet"


def render_part(records: list[dict], seed: int, template: str | None, path: str | Path,
                brevity: BrevityDraw | None = None, first: int = 0, roots: dict[str, str] | None = None) -> dict:
    """Render one part's records, the dataset's records from position `first` on, into one instructions
    file (the images some records carry as bytes into a tar beside it: `embed_images`); what it holds.
    `brevity` says which of the dataset's records ask for a short or long answer; image references are
    written portable (`portable_images`: the run folder is the one above render/, `roots` the named folders)."""
    labels = brevity.labels(first, len(records)) if brevity is not None and not template_pinned(template) else None
    records = portable_images(embed_images(records, Path(path)), run_folder(Path(path).parents[1]), roots or {})
    with collector_paused():
        table = render_table(records, seed, template, labels)
    write_table(table, Path(path))
    return part_summary(table)


def template_pinned(template: str | None) -> bool:
    """Whether an entry names one template (its brevity is that template's), not a set to draw from."""
    return bool(template) and not template.startswith(SET_MARK)


# the folder, beside the instructions/ folder, of the tars holding images a dataset gave as bytes
IMAGES_FOLDER = "images"


def embed_images(records: list[dict], path: Path) -> list[dict]:
    """The records, those whose image came as bytes (a Hugging Face Image column: `image.bytes`) pointing
    instead at a member of a webdataset tar written beside the instructions file `path`
    (`../images/<its stem>.tar`, one member per distinct image, named by its content's hash), as ingest's
    pairs point at theirs: the instructions keep references, never pixels. Records without bytes are
    returned as they are, and no tar is written."""
    import hashlib
    import io
    import tarfile

    if not any(record.get("image") and record["image"].get("bytes") is not None for record in records):
        return records
    tar_path = (path.parent.parent / IMAGES_FOLDER / f"{path.name.removesuffix('.parquet')}.tar").resolve()
    keys: dict[bytes, str] = {}
    out = []
    with atomic_path(tar_path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for record in records:
            image = record.get("image") or {}
            data = image.get("bytes")
            if data is None:
                out.append(record)
                continue
            if data not in keys:
                keys[data] = hashlib.sha256(data).hexdigest()[:32]
                member = tarfile.TarInfo(f"{keys[data]}.{image['format']}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            reference = {k: v for k, v in image.items() if k not in ("bytes", "format")}
            out.append({**record, "image": {**reference, "shard": str(tar_path), "key": keys[data]}})
    return out


def portable_images(records: list[dict], run_dir: Path, roots: dict[str, str]) -> list[dict]:
    """The records, their image references (`image`, `frames`) written so the run folder and the datasets
    can move: a file under one of the named folders `roots` (the deepest that holds it) as {root: NAME, path:
    relative to that folder}, so train.image_roots can re-point it; any other shard or file inside `run_dir`
    relative to it (`ingest/shards/pairs-00000.tar`). Anything else (a URL, a file elsewhere) is kept as it
    is, so it still loads where it is."""
    folders = sorted(((name, os.path.normpath(os.path.abspath(folder))) for name, folder in roots.items()),
                     key=lambda named: -len(named[1]))
    run = os.path.normpath(os.path.abspath(run_dir))

    def inside(path: str, folder: str) -> str | None:
        return path[len(folder) + 1:].replace(os.sep, "/") if path.startswith(folder + os.sep) else None

    def portable(image: dict | None) -> dict | None:
        if not image:
            return image
        image = dict(image)
        for field in ("shard", "path"):
            value = image.get(field)
            if not value or not os.path.isabs(value):
                continue
            value = os.path.normpath(value)
            named = next(((name, relative) for name, folder in folders if field == "path"
                          and (relative := inside(value, folder)) is not None), None)
            if named is not None:
                image.update(root=named[0], path=named[1])
            elif (relative := inside(value, run)) is not None:
                image[field] = relative
        return image

    out = []
    for record in records:
        record = {**record, "image": portable(record.get("image"))}
        if record.get("frames"):
            record["frames"] = [portable(frame) for frame in record["frames"]]
        out.append(record)
    return out


def part_summary(table: pa.Table) -> dict:
    """What one instructions file holds: rows, and rows by template, by language and by brevity (the
    manifest's counts); and the records left out of it, by reason, with an example message for each."""
    dropped, examples = dropped_counts(table)
    return {"rows": table.num_rows, "templates": _value_counts(table, "template_id"),
            "languages": _value_counts(table, "lang"), "brevity": _value_counts(table, "brevity"),
            "dropped": dropped, "dropped_examples": examples}


def written_part_summary(path: str | Path) -> dict:
    """`part_summary` of a part already on disk (a resumed render keeps it), from three of its columns."""
    return part_summary(pq.read_table(path, columns=["template_id", "lang", "brevity"]))


def _value_counts(table: pa.Table, name: str) -> dict[str, int]:
    counts = table.column(name).value_counts().flatten()
    return dict(zip(counts[0].to_pylist(), counts[1].to_pylist()))


def read_instructions(paths: list[Path], filter=None, columns: list[str] | None = None) -> pa.Table:
    """Instructions files as one table, in file order; `filter` (a pyarrow expression) and `columns` are
    applied as each file is read, so rows and columns left out are never built."""
    schema = INSTRUCTIONS_SCHEMA if columns is None else pa.schema([INSTRUCTIONS_SCHEMA.field(c) for c in columns])
    tables = [pq.read_table(p, schema=INSTRUCTIONS_SCHEMA, filters=filter, columns=columns) for p in paths]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def instructions_filter(split: str | None = None, datasets: list[str] | None = None, task: str | None = None):
    """The pyarrow expression of `selected` (and a task): None when nothing is asked."""
    import pyarrow.compute as pc

    terms = []
    if split is not None:
        terms.append(pc.field("split") == split)
    if task is not None:
        terms.append(pc.field("task") == task)
    if datasets is not None:
        prefixes = [pc.starts_with(pc.field("dataset"), pattern=prefix) for prefix in datasets]
        terms.append(functools.reduce(operator.or_, prefixes) if prefixes else pc.scalar(False))
    return functools.reduce(operator.and_, terms) if terms else None


def read_render_output(render_dir: str | Path, split: str | None = None, datasets: list[str] | None = None,
                       task: str | None = None, columns: list[str] | None = None) -> list[dict] | None:
    """The instruction records of a finished render stage as dicts (None when it has not finished): every
    one, or only those of `split`, of a dataset named by one of the prefixes `datasets` (as `selected`
    reads them) and of `task`, with only `columns`; the filter is applied as the files are read."""
    manifest = read_manifest(render_dir)
    if manifest is None:
        return None
    paths = [Path(render_dir) / f for f in manifest["files"]]
    return read_instructions(paths, instructions_filter(split, datasets, task), columns).to_pylist()


def selected(record: dict, datasets: list[str], split: str) -> bool:
    """Whether a record is of this split and of a dataset named by one of the prefixes ('pairs' takes 'pairs/cc3m')."""
    return record["split"] == split and any(record["dataset"].startswith(prefix) for prefix in datasets)
