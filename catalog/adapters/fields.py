"""Reading native annotation JSON with errors that point at the file, the row and the field."""

from __future__ import annotations

import json
from collections import Counter
from itertools import chain
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


def _load_top_level(path: Path, kind: type, expected: str):
    """The parsed file, its top level checked to be of `kind` (`expected` says what it should hold)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        data = _parse(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, kind):
        raise AnnotationError(f"{path}: top level is {_json_type(data)}; expected {expected}")
    return data


def load_annotation_json(path: Path) -> dict:
    """The file's top-level JSON object."""
    return _load_top_level(path, dict, "an object")


def decode_typed(path: Path, schema: type):
    """The file decoded straight into `schema`, a msgspec Struct naming the fields a reader needs (types
    checked in C, every other field skipped: three times orjson's speed on VQAv2's annotations), or
    None when the file does not fit it: the caller then reads it with load_annotation_json and `field`,
    which name the file, row and field at fault."""
    import msgspec

    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return msgspec.json.decode(path.read_bytes(), type=schema)
    except msgspec.DecodeError:  # ValidationError among them
        return None


def load_annotation_list(path: Path, holds: str = "questions") -> list:
    """The file's top-level JSON list (A-OKVQA, VizWiz, LLaVA-Instruct files are one bare list)."""
    return _load_top_level(path, list, f"a list of {holds}")


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


def _all_of_kind(values: list, kind: type) -> bool:
    """Whether every value is of `kind` as `field` counts it; the types are gathered in C, not in a loop."""
    kinds = set(map(type, values))
    return kinds <= ({int, float} if kind is float else {kind})


def columns(rows: object, kinds: dict[str, type], path: Path, name: str) -> dict[str, list]:
    """{field: [row[field] for row in rows]} for each field of `kinds`, every value checked to be of
    its kind; `name` names the list, e.g. 'annotations'. Checked in bulk, a pass per field; only a list
    holding a bad row is walked row by row, to name the first culprit as `field` does."""
    if not isinstance(rows, list):
        raise AnnotationError(f"{path}: {name}: is {_json_type(rows)}; expected a list")
    try:
        out = {key: [row[key] for row in rows] for key in kinds}
        if all(_all_of_kind(out[key], kind) for key, kind in kinds.items()):
            return out
    except (KeyError, TypeError, IndexError):
        pass
    out = {key: [] for key in kinds}
    for index, row in enumerate(rows):
        for key, kind in kinds.items():
            out[key].append(field(row, key, kind, path, f"{name}[{index}]"))
    return out


def strings_of_each(lists: list[list], name: str, path: Path, where: str) -> list[list[str]]:
    """strings_of for many lists at once (e.g. the human answers of every annotation); `where` names
    the rows holding the lists and the field, e.g. 'annotations[{}].answers'."""
    try:
        values = [[row[name] for row in rows] for rows in lists]
        if _all_of_kind(list(chain.from_iterable(values)), str):
            return values
    except (KeyError, TypeError, IndexError):
        pass
    return [strings_of(rows, name, path, where.format(n)) for n, rows in enumerate(lists)]


def first_repeat(values: list) -> int | None:
    """The index of the first value seen before, or None when all differ (checked in bulk first)."""
    if len(set(values)) == len(values):
        return None
    seen = set()
    for index, value in enumerate(values):
        if value in seen:
            return index
        seen.add(value)
    return None


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
