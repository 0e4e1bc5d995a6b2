"""Dataset cards: what each dataset or caption-pair source is, where it comes from, and how to read it.

Two kinds of card share one folder. A `dataset` card (the default when `kind` is absent) describes
one of the annotated datasets and names the adapter for its native format. A `pairs` card describes
a web-scale URL + caption list: where its metadata is published, and, per published layout, the
file format and the exact URL and caption column names an ingest source needs.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from catalog.records import TASK_FIELDS

CARDS_DIR = Path(__file__).with_name("cards")
KINDS = ("dataset", "pairs")
REQUIRED_FIELDS = {
    "dataset": ("name", "title", "tasks", "held", "splits", "native_format", "source", "license", "citation",
                "adapter"),
    "pairs": ("name", "title", "kind", "lang", "size", "layouts", "default_layout", "license", "citation",
              "sources"),
}
HELD_VALUES = ("held-in", "held-out")
# The 11 task categories of InstructBLIP's 26 datasets (arXiv 2305.06500, Figure 2), as card `tasks` ids: the
# tasks of the canonical record (catalog/records.py)
TASKS = tuple(TASK_FIELDS)
# The file formats a URL list can come in; pipelines.ingest.sources reads each of them.
METADATA_FORMATS = ("parquet", "tsv", "csv", "jsonl", "json")
LAYOUT_FIELDS = ("where", "format", "url_col", "caption_col")


class CardError(ValueError):
    """A card file that is malformed."""


class UnknownLayoutError(KeyError):
    """A pairs card has no metadata layout of the requested name."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownCardError(KeyError):
    """No card has the requested name."""

    def __str__(self) -> str:
        # KeyError would print the message wrapped in quotes.
        return str(self.args[0])


def _read_card(path: Path) -> dict:
    try:
        card = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise CardError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(card, dict):
        raise CardError(f"{path}: expected a mapping of card fields")
    kind = card_kind(card)
    if kind not in KINDS:
        raise CardError(f"{path}: kind is {kind!r}; expected one of {', '.join(KINDS)}")
    missing = [name for name in REQUIRED_FIELDS[kind] if name not in card]
    if missing:
        raise CardError(f"{path}: missing field(s) {', '.join(repr(m) for m in missing)}")
    if card["name"] != path.stem:
        raise CardError(f"{path}: name {card['name']!r} differs from the file name; expected {path.stem!r}")
    if kind == "dataset":
        _check_dataset_card(path, card)
    if kind == "pairs":
        _check_pairs_card(path, card)
    return card


def _check_dataset_card(path: Path, card: dict) -> None:
    if card["held"] not in HELD_VALUES:
        raise CardError(f"{path}: held is {card['held']!r}; expected one of {', '.join(HELD_VALUES)}")
    tasks = card["tasks"]
    if not isinstance(tasks, list) or not tasks or any(task not in TASKS for task in tasks):
        raise CardError(f"{path}: tasks is {tasks!r}; expected a list of some of {', '.join(TASKS)}")
    role = (card.get("instructblip") or {}).get("role", card["held"])
    if role != card["held"]:
        raise CardError(f"{path}: instructblip.role is {role!r} but held is {card['held']!r}; they must agree")
    adapter = card["adapter"]
    if adapter is not None and (not isinstance(adapter, str) or "." not in adapter):
        raise CardError(f"{path}: adapter is {adapter!r}; expected module.function, or null while none is written")
    if not isinstance(card.get("unverified", []), list):
        raise CardError(f"{path}: unverified must be a list of the facts that could not be checked")


def _check_pairs_card(path: Path, card: dict) -> None:
    if not card_languages(card):
        raise CardError(f"{path}: lang is {card['lang']!r}; expected a language code or a list of them")
    size = card["size"]
    if not isinstance(size, dict) or not isinstance(size.get("pairs"), int):
        raise CardError(f"{path}: size is {size!r}; expected a mapping with an integer 'pairs'")
    layouts = card["layouts"]
    if not isinstance(layouts, dict) or not layouts:
        raise CardError(f"{path}: layouts is {layouts!r}; expected a mapping of layout name to its files")
    if card["default_layout"] not in layouts:
        raise CardError(f"{path}: default_layout {card['default_layout']!r} is not one of the layouts "
                        f"({', '.join(layouts)})")
    for name, layout in layouts.items():
        where = f"{path}: layouts.{name}"
        missing = [field for field in LAYOUT_FIELDS if field not in (layout or {})]
        if missing:
            raise CardError(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)}")
        if layout["format"] not in METADATA_FORMATS:
            raise CardError(f"{where}: format {layout['format']!r}; expected one of {', '.join(METADATA_FORMATS)}")
        if layout.get("header", True) is False:
            columns = layout.get("columns") or []
            lost = [c for c in (layout["url_col"], layout["caption_col"]) if c not in columns]
            if lost:
                raise CardError(f"{where}: a headerless file needs 'columns' naming {', '.join(lost)}")
    sources = card["sources"]
    if not isinstance(sources, list) or not sources or not all(
            isinstance(s, dict) and "fact" in s and "read_at" in s for s in sources):
        raise CardError(f"{path}: sources must be a non-empty list of {{fact, read_at}} entries")
    if not isinstance(card.get("unverified", []), list):
        raise CardError(f"{path}: unverified must be a list of the facts that could not be checked")


def card_kind(card: dict) -> str:
    """`pairs` or `dataset`; a card without `kind` is a dataset card."""
    return card.get("kind", "dataset")


def card_languages(card: dict) -> list[str]:
    """The card's language codes, whether `lang` is one code or a list."""
    lang = card.get("lang")
    if isinstance(lang, str):
        return [lang]
    if isinstance(lang, list) and all(isinstance(code, str) for code in lang):
        return list(lang)
    return []


def pairs_layout(card: dict, layout: str | None = None) -> dict:
    """One metadata layout of a pairs card (its default when `layout` is None)."""
    name = layout or card["default_layout"]
    if name not in card["layouts"]:
        raise UnknownLayoutError(
            f"card {card['name']!r} has no layout {name!r}; its layouts: {', '.join(card['layouts'])}")
    return card["layouts"][name]


# the user's own card folders (a config's catalog.paths), read alongside CARDS_DIR: `use_card_folders`
_user_folders: tuple[Path, ...] = ()


def use_card_folders(folders) -> None:
    """Read the cards of `folders` (NAME.yaml files, in the format of catalog/cards/) alongside Loom's own
    from now on; a card whose name is taken (by a built-in card or another user folder's) is refused
    naming both files."""
    global _user_folders
    wanted = tuple(Path(folder).resolve() for folder in folders)
    for folder in wanted:
        if not folder.is_dir():
            raise CardError(f"card folder {folder}: no such folder; give folders of NAME.yaml cards "
                            "(the format of catalog/cards/)")
    _cards_of(CARDS_DIR.resolve(), wanted)  # a malformed or clashing card is named now, not at first use
    _user_folders = wanted


@functools.lru_cache(maxsize=None)
def _cards(cards_dir: Path) -> dict[str, dict]:
    return {path.stem: _read_card(path) for path in sorted(cards_dir.glob("*.yaml"))}


@functools.lru_cache(maxsize=None)
def _cards_of(cards_dir: Path, user_folders: tuple[Path, ...]) -> dict[str, dict]:
    cards, files = dict(_cards(cards_dir)), {name: cards_dir / f"{name}.yaml" for name in _cards(cards_dir)}
    for folder in user_folders:
        for name, card in _cards(folder).items():
            if name in cards:
                raise CardError(f"card {name!r} is in both {files[name]} and {folder / f'{name}.yaml'}; card names "
                                "are unique: rename yours (its file and its `name:`)")
            cards[name], files[name] = card, folder / f"{name}.yaml"
    return cards


def load_cards(cards_dir: str | Path | None = None) -> dict[str, dict]:
    """Every card, by dataset name (a fresh copy each call, so callers may change it): those of `cards_dir`,
    or Loom's own and the user folders' (`use_card_folders`)."""
    cards = _cards((Path(cards_dir)).resolve()) if cards_dir is not None else _cards_of(CARDS_DIR.resolve(),
                                                                                         _user_folders)
    return {name: copy.deepcopy(card) for name, card in cards.items()}


def select_cards(cards: dict[str, dict], kind: str | None = None, lang: str | None = None,
                 task: str | None = None, held: str | None = None) -> dict[str, dict]:
    """The cards of one kind, language, task and/or held-in/out role (a card matches a language or task it lists).
    A task or role selects dataset cards only: caption-pair sources have neither."""
    return {
        name: card for name, card in cards.items()
        if (kind is None or card_kind(card) == kind) and (lang is None or lang in card_languages(card))
        and (task is None or task in card.get("tasks", [])) and (held is None or card.get("held") == held)
    }


def get_card(name: str, cards_dir: str | Path | None = None) -> dict:
    """The card of one dataset; an unknown name lists the known ones."""
    cards = load_cards(cards_dir)
    if name not in cards:
        raise UnknownCardError(f"no dataset card named {name!r}; known: {', '.join(sorted(cards)) or '(none)'}")
    return cards[name]

