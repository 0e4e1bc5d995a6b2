"""Reading native annotation JSON with errors that point at the file, the row and the field."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from . import AnnotationError

_EXPECTED = {
    int: "an integer",
    str: "a string",
    list: "a list",
    dict: "an object",
    float: "a number",
}


def _parse(path: Path):
    """A JSON file parsed with orjson (three times json's speed on annotation files; its errors are
    json.JSONDecodeError too), or json where orjson is not installed."""
    try:
        import orjson
    except ImportError:
        return json.loads(path.read_bytes())
    return orjson.loads(path.read_bytes())


def load_annotation_json(path: Path) -> dict:
    """The file's top-level JSON object."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        data = _parse(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: top level is {_json_type(data)}; expected an object")
    return data


def load_annotation_list(path: Path, holds: str = "questions") -> list:
    """The file's top-level JSON list (A-OKVQA, VizWiz, LLaVA-Instruct files are one bare list)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        data = _parse(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: top level is {_json_type(data)}; expected a list of {holds}")
    return data


def load_annotation_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) per non-blank line; a line that is not a JSON object names the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    rows = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise AnnotationError(f"{path}: line {number}: not valid JSON ({error})") from error
            if not isinstance(row, dict):
                raise AnnotationError(f"{path}: line {number}: is {_json_type(row)}; expected a JSON object")
            rows.append((number, row))
    return rows


def image_size(image_path: Path) -> tuple[int, int]:
    """(width, height) from the image file's header; nothing is decoded. For files that carry no sizes."""
    from PIL import Image

    with Image.open(image_path) as image:
        return image.size


def image_entry(image_path: Path, path: Path, where: str, named: str) -> dict:
    """{"path", "width", "height"} of the image a row names (`named`, e.g. "field 'img' names 'x.png'"),
    read from its header; a missing or unreadable image names the annotation file and row."""
    if not image_path.is_file():
        raise AnnotationError(f"{path}: {where}: {named}, but there is no image at {image_path}")
    try:
        width, height = image_size(image_path)
    except OSError as error:
        raise AnnotationError(f"{path}: {where}: {image_path} is not a readable image ({error})") from error
    return {"path": str(image_path), "width": width, "height": height}


def most_common_answer(answers: list[str]) -> str:
    """The answer given most often; a tie goes to the one given first."""
    return Counter(answers).most_common(1)[0][0]


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


def string_list(row: object, name: str, path: Path, where: str) -> list[str]:
    """row[name], checked to be a list of strings; a bad item is named, e.g. 'choices[2]'."""
    values = field(row, name, list, path, where)
    for n, value in enumerate(values):
        if not isinstance(value, str):
            raise AnnotationError(f"{path}: {where}: {name}[{n}] is {value!r:.60}; expected a string")
    return values


def strings_of(rows: list, name: str, path: Path, where: str) -> list[str]:
    """rows[i][name] for every row, each checked to be a string; `where` names the list, e.g.
    'annotations[3].answers'. Checked in bulk; only a bad list is walked row by row to name the culprit."""
    try:
        values = [row[name] for row in rows]
        if all(type(value) is str for value in values):
            return values
    except (KeyError, TypeError):
        pass
    return [field(row, name, str, path, f"{where}[{n}]") for n, row in enumerate(rows)]


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
