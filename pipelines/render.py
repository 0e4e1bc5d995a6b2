"""Canonical dataset records → instruction records (the instructions contract) through templates."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from templates.library import render_for_record

IMAGE_REF = pa.struct([
    ("shard", pa.string()), ("key", pa.string()), ("path", pa.string()), ("url", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()),
])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
INSTRUCTIONS_SCHEMA = pa.schema([
    ("id", pa.string()), ("dataset", pa.string()), ("task", pa.string()), ("split", pa.string()),
    ("lang", pa.string()), ("template_id", pa.string()), ("brevity", pa.string()),
    ("images", pa.list_(IMAGE_REF)), ("messages", pa.list_(MESSAGE)),
    # for scoring held-out questions: every reference answer, and the kind of question
    ("answers", pa.list_(pa.string())), ("question_type", pa.string()),
])


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def render_table(records: list[dict], seed: int, template_id: str | None = None) -> pa.Table:
    """The instruction records of many canonical records, built column by column: pyarrow converts
    each column's Python values in one call (a row dict per record and pyarrow's row conversion cost
    as much again as the rendering)."""
    rendered = [render_for_record(record, seed, template_id) for record in records]
    columns = {name: [record.get(name) for record in records]
               for name in ("id", "dataset", "task", "split", "lang", "answers", "question_type")}
    columns["template_id"] = [template.id for template, _ in rendered]
    columns["brevity"] = [template.brevity for template, _ in rendered]
    columns["images"] = [record.get("frames") or [record["image"]] for record in records]
    columns["messages"] = [messages for _, messages in rendered]
    return pa.Table.from_arrays([pa.array(columns[f.name], f.type) for f in INSTRUCTIONS_SCHEMA], schema=INSTRUCTIONS_SCHEMA)


def read_instructions(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p, schema=INSTRUCTIONS_SCHEMA) for p in paths])


def read_render_output(render_dir: str | Path) -> list[dict] | None:
    """Every instruction record of a finished render stage, or None when it has not finished."""
    from pipelines.manifest import read_manifest

    manifest = read_manifest(render_dir)
    if manifest is None:
        return None
    return read_instructions([Path(render_dir) / f for f in manifest["files"]]).to_pylist()


def selected(record: dict, datasets: list[str], split: str) -> bool:
    """Whether a record is of this split and of a dataset named by one of the prefixes ('pairs' takes 'pairs/cc3m')."""
    return record["split"] == split and any(record["dataset"].startswith(prefix) for prefix in datasets)
