"""One YAML config for a whole run: loading, `{out}` substitution and validation before any work starts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("demo_data", "ingest", "render", "pack", "train", "evaluate")


class ConfigError(ValueError):
    """A config value that cannot work, named with its key and what was expected."""


def _substitute(value: Any, out: str, base: str) -> Any:
    if isinstance(value, str):
        return value.replace("{out}", out).replace("{config_dir}", base)
    if isinstance(value, list):
        return [_substitute(v, out, base) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, out, base) for k, v in value.items()}
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives the same key twice (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{key}: given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                                  "keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


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
        raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections {SECTIONS}, got {type(raw).__name__}")
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; expected some of {list(SECTIONS)}")
    return _substitute(raw, str(Path(out)), str(config_path.resolve().parent))


def section(config: dict, name: str, defaults: dict) -> dict:
    """A config section merged over its defaults, refusing keys and types the job does not know."""
    given = config.get(name) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{name}: expected a mapping, got {given!r}")
    unknown = set(given) - set(defaults)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {sorted(unknown)}; expected some of {sorted(defaults)}")
    merged = dict(defaults)
    for key, value in given.items():
        default = defaults[key]
        if default is not None and value is not None and not _same_kind(default, value):
            raise ConfigError(
                f"{name}.{key}: {value!r} is a {type(value).__name__}; expected a {type(default).__name__} "
                f"like the default {default!r}"
            )
        merged[key] = value
    return merged


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) == isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
