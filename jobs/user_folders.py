"""Your own template and card folders, `templates.paths` and `catalog.paths`, read alongside Loom's own by
every command that takes a config: render (and its Ray workers), ingest (a caption-pair card of yours),
`loom templates lint|stats|preview --config` and `loom catalog list --config`.

`render.template_paths` and `render.catalog_paths` are their older names, still read; the schema refuses a
config that gives a folder list under both names with different values (jobs/schema.py's RunConfig).
"""
from __future__ import annotations

from jobs.config import ConfigError, section

# what each kind of folder holds: (top-level section, its older name under render:)
FOLDER_KEYS = {"templates": "template_paths", "catalog": "catalog_paths"}


def folder_key(config: dict, kind: str) -> str:
    """The key a config names its `kind` folders under: `templates.paths`, or the older render one it gives."""
    older = FOLDER_KEYS[kind]
    if "paths" not in (config.get(kind) or {}) and older in (config.get("render") or {}):
        return f"render.{older}"
    return f"{kind}.paths"


def configured_folders(config: dict, kind: str) -> list[str]:
    """The `kind` folders (templates or catalog) a config names, under either name."""
    key = folder_key(config, kind)
    if key.startswith("render."):
        return list(section(config, "render")[FOLDER_KEYS[kind]])
    return list(section(config, kind)["paths"])


def use_user_folders(config: dict, kinds: tuple[str, ...] = ("templates", "catalog")) -> dict[str, list[str]]:
    """Read the config's template and card folders (those of `kinds`) alongside Loom's own from now on, each
    checked (a missing folder, a malformed file, a taken id or name is refused naming the key); the folders
    by kind."""
    from catalog.cards import CardError, use_card_folders
    from templates.library import TemplateError, use_template_folders

    use = {"templates": use_template_folders, "catalog": use_card_folders}
    folders = {}
    for kind in kinds:
        folders[kind] = configured_folders(config, kind)
        try:
            use[kind](folders[kind])
        except (TemplateError, CardError) as err:
            raise ConfigError(f"{folder_key(config, kind)}: {err}") from err
    return folders
