"""Reading native annotation JSON with errors that point at the file, the row and the field."""

from __future__ import annotations

import json
from pathlib import Path

from . import AnnotationError

_EXPECTED = {
    int: "an integer",
    str: "a string",
    list: "a list",
    dict: "an object",
    float: "a number",
}


def load_annotation_json(path: Path) -> dict:
    """The file's top-level JSON object."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: top level is {_json_type(data)}; expected an object")
    return data


def _json_type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _is_kind(value: object, kind: type) -> bool:
    # JSON true/false load as bool, which Python counts as int; they are never a valid id or size.
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def field(row: object, name: str, kind: type, path: Path, where: str):
    """row[name], checked to be of `kind`; `where` names the row, e.g. 'annotations[17]'."""
    if not isinstance(row, dict):
        raise AnnotationError(f"{path}: {where}: is {_json_type(row)}; expected an object")
    if name not in row:
        raise AnnotationError(f"{path}: {where}: missing field '{name}'")
    value = row[name]
    if not _is_kind(value, kind):
        raise AnnotationError(
            f"{path}: {where}: field '{name}' is {_json_type(value)} ({value!r:.60}); expected {_EXPECTED[kind]}"
        )
    return value
