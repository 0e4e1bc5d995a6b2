"""One YAML config for a whole run: loading, `{out}` substitution and validation before any work starts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jobs.schema import SECTIONS, SchemaError, check_config, section_settings


class ConfigError(ValueError):
    """A config value that cannot work, named with its key and what was expected; `problems` holds one line
    per key at fault where the schema found several."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]

    @classmethod
    def from_schema(cls, err: SchemaError) -> ConfigError:
        more = len(err.problems) - 1
        tail = f" (and {more} more: `loom config check CONFIG` lists every one)" if more else ""
        return cls(err.problems[0] + tail, err.problems)


def _substitute(value: Any, out: str, base: str) -> Any:
    if isinstance(value, str):
        return value.replace("{out}", out).replace("{config_dir}", base)
    if isinstance(value, list):
        return [_substitute(v, out, base) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, out, base) for k, v in value.items()}
    return value


MAX_VALUES = 100_000  # values a config may expand to through YAML aliases (a real one holds hundreds)


def _check_structure(node, path: str, key: str = "", ancestors: tuple = (), sizes: dict | None = None) -> int:
    """Refuse a mapping that gives the same key twice anywhere in the file (YAML keeps the last silently), an
    alias inside its own anchor, and aliases that expand past MAX_VALUES; keys are named as the config's
    reader names them (ingest.seed, render.datasets[2].limit). Returns the values `node` expands to."""
    sizes = {} if sizes is None else sizes
    if id(node) in ancestors:
        raise ConfigError(f"{key}: holds itself (an alias inside its own anchor); write the value out")
    if id(node) in sizes:  # an alias of a node already walked
        return sizes[id(node)]
    size = 1
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            where = f"{key}.{name}" if key else name
            if name in lines and key_node.tag != "tag:yaml.org,2002:merge":
                raise ConfigError(f"{where}: given twice (lines {lines[name]} and {key_node.start_mark.line + 1} of "
                                  f"{path}); keep one")
            lines[name] = key_node.start_mark.line + 1
            size += _check_structure(value_node, path, where, ancestors + (id(node),), sizes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            size += _check_structure(item, path, f"{key}[{i}]", ancestors + (id(node),), sizes)
    if size > MAX_VALUES:
        raise ConfigError(f"{key or path}: expands to more than {MAX_VALUES:,} values through YAML aliases; write "
                          "the config out without them")
    sizes[id(node)] = size
    return size


def load_config(path: str, out: str) -> dict:
    """Read a run config; `{out}` in any string becomes the run's output folder."""
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = config_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror}") from err
    try:
        _check_structure(yaml.compose(text, Loader=yaml.SafeLoader), path)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:  # its own text spans lines: the problem and where, on one
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}; fix the file's syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections {', '.join(SECTIONS)}, got {type(raw).__name__}")
    config = _substitute(raw, str(Path(out)), str(config_path.resolve().parent))
    try:
        check_config(config)  # every section, whichever stage runs: a typo in train: fails before ingest
    except SchemaError as err:
        raise ConfigError.from_schema(err) from None
    return config


def section(config: dict, name: str) -> dict:
    """A config section merged over its defaults (jobs/schema.py), refusing keys, types and values out of range."""
    try:
        return section_settings(name, config.get(name))
    except SchemaError as err:
        raise ConfigError.from_schema(err) from None


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
