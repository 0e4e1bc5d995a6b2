"""A config's problems as one line each: `<dotted.key>: <what is wrong>; expected <what is accepted> (<what the
key is>)`, from pydantic's errors and the config's JSON Schema (jobs/schema.py), never a traceback."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class KeyedError(ValueError):
    """Raised by a validator about one of its model's keys (a model-level check knows no key of its own)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key



def problems(err: ValidationError, schema: dict, prefix: tuple = ()) -> list[str]:
    """One line per key at fault, `key: what is wrong; expected what`; the unknown keys of one mapping together.
    `schema` is the run config's JSON Schema; `prefix` is where the model that raised `err` sits in it (a
    section's name)."""
    lines: dict[str, str] = {}
    unknown: dict[tuple, list[str]] = {}
    for error in err.errors():
        loc = prefix + tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        if error["type"] == "value_error" and isinstance(error["ctx"].get("error"), KeyedError):
            loc += (error["ctx"]["error"].key,)
        key = _dotted(loc)
        if key in lines:  # a value that fails several ways is reported once
            continue
        lines[key] = f"{key}: {_what_is_wrong(error)}"
        if error["type"] != "value_error":
            lines[key] += f"; expected {_expected(_node_at(schema, loc), schema)}"
    for loc, keys in unknown.items():
        if not loc:
            for name in keys:
                sections = ", ".join(_node_at(schema, ())["properties"])
                lines[name] = f"{name}: unknown section; expected some of {sections}"
            continue
        known = sorted(_node_at(schema, loc).get("properties", {}))
        lines[_dotted(loc)] = f"{_dotted(loc)}: unknown key(s) {sorted(keys)}; expected some of {known}"
    return list(lines.values())


def _dotted(loc: tuple) -> str:
    """A location as the config's reader names it: ingest.sources[0].path."""
    key = ""
    for part in loc:
        if part == "[key]":  # a mapping's key itself is at fault, not its value
            continue
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _resolve(node: dict, schema: dict) -> dict:
    """A schema node with its $ref followed, and `T | None` read as T marked nullable."""
    while "$ref" in node:
        node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    branches = [branch for branch in node.get("anyOf", []) if branch.get("type") != "null"]
    if len(branches) == 1:
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        node = {**_resolve(branches[0], schema), **outer, "nullable": True}
    return node


def _node_at(schema: dict, loc: tuple) -> dict:
    node = _resolve(schema, schema)
    for part in loc:
        if part == "[key]":
            return {"type": "string"}
        if isinstance(part, int) and "items" in node:
            node = node["items"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
        node = _resolve(node, schema)
    return node


def _expected(node: dict, schema: dict, described: bool = True) -> str:
    """What a key accepts, in words, from its JSON Schema node."""
    kind = node.get("type")
    if "enum" in node:
        text = "one of " + ", ".join(str(v) for v in node["enum"])
    elif kind == "integer":
        text = "a whole number" + _range(node)
    elif kind == "number":
        text = "a number" + _range(node)
    elif kind == "boolean":
        text = "true or false"
    elif kind == "string":
        text = "text"
    elif kind == "array":
        items = _resolve(node.get("items", {}), schema)
        size = node.get("minItems") if node.get("minItems") == node.get("maxItems") else None
        text = "a list" + (f" of {size}" if size else "") + ("" if size or not node.get("minItems") else
                                                           " of one or more")
        text += f", each {_expected(items, schema, described=False)}" if items else ""
    elif kind == "object" and "properties" in node:  # a section or an entry: the docstring is no "expected"
        described = False
        keys = sorted(node["properties"])
        text = f"a mapping with some of {keys}" if len(keys) <= 8 else "a mapping of its keys (`loom config schema`)"
    elif kind == "object":
        values = _resolve(node.get("additionalProperties") or {}, schema)
        text = "a mapping of name: " + (_expected(values, schema, described=False) if values else "value")
    else:
        text = "a valid value"
    if node.get("nullable"):
        text += ", or null"
    return f"{text} ({node['description']})" if described and node.get("description") else text


def _range(node: dict) -> str:
    def shown(n):
        return f"{n:,}" if isinstance(n, int) and abs(n) >= 10_000 else str(n)

    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        return f" from {shown(low)} to {shown(high)}"
    parts = [f"{word} {shown(node[bound])}" for bound, word in (("minimum", ">="), ("exclusiveMinimum", "above"),
                                                                ("maximum", "<="), ("exclusiveMaximum", "below"))
             if node.get(bound) is not None]
    return (" " + " and ".join(parts)) if parts else ""


def _shown(value: Any) -> str:
    """A value as the config wrote it: true, null, 'text', 3."""
    text = {True: "true", False: "false", None: "null"}.get(value, repr(value)) \
        if isinstance(value, (bool, type(None))) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


KINDS = {bool: "a boolean", str: "text", float: "a decimal number", int: "a whole number", list: "a list",
         dict: "a mapping", type(None): "null"}


def _what_is_wrong(error: dict) -> str:
    value, kind = error["input"], error["type"]
    if kind == "value_error":  # a validator's own message says what is wrong and what to do
        return str(error["ctx"]["error"])
    if kind == "missing":
        return "missing"
    if kind in ("greater_than", "greater_than_equal"):
        return f"{_shown(value)} is too small"
    if kind in ("less_than", "less_than_equal"):
        return f"{_shown(value)} is too large"
    if kind == "finite_number":
        return f"{_shown(value)} is not a finite number"
    if kind == "literal_error":
        return f"{_shown(value)} is not one of the choices"
    if kind in ("too_short", "too_long"):
        return f"{_shown(value)} has {error['ctx']['actual_length']} item(s)"
    if kind.endswith("_type"):
        hint = ""
        if isinstance(value, str) and _reads_as_number(value):  # YAML 1.1 reads 1e-4 as text, and '3' is text
            hint = (" (YAML reads a number like 1e-4 as text: write 1.0e-4)" if "e" in value.lower()
                    else " (quoted, so text: write it without quotes)")
        return f"{_shown(value)} is {KINDS.get(type(value), type(value).__name__)}{hint}"
    return f"{_shown(value)}: {error['msg']}"


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
