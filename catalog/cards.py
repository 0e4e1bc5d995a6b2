"""Dataset cards: what each dataset is, where it comes from, and which adapter reads it."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

CARDS_DIR = Path(__file__).with_name("cards")
REQUIRED_FIELDS = (
    "name",
    "title",
    "tasks",
    "held",
    "splits",
    "native_format",
    "source",
    "license",
    "citation",
    "adapter",
)
HELD_VALUES = ("held-in", "held-out")


class CardError(ValueError):
    """A card file that is malformed."""


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
    missing = [name for name in REQUIRED_FIELDS if name not in card]
    if missing:
        raise CardError(f"{path}: missing field(s) {', '.join(repr(m) for m in missing)}")
    if card["name"] != path.stem:
        raise CardError(f"{path}: name {card['name']!r} differs from the file name; expected {path.stem!r}")
    if card["held"] not in HELD_VALUES:
        raise CardError(f"{path}: held is {card['held']!r}; expected one of {', '.join(HELD_VALUES)}")
    return card


@functools.lru_cache(maxsize=None)
def _cards(cards_dir: Path) -> dict[str, dict]:
    return {path.stem: _read_card(path) for path in sorted(cards_dir.glob("*.yaml"))}


def load_cards(cards_dir: str | Path | None = None) -> dict[str, dict]:
    """Every card, by dataset name (a fresh copy each call, so callers may change it)."""
    directory = Path(cards_dir) if cards_dir is not None else CARDS_DIR
    return {name: copy.deepcopy(card) for name, card in _cards(directory.resolve()).items()}


def get_card(name: str, cards_dir: str | Path | None = None) -> dict:
    """The card of one dataset; an unknown name lists the known ones."""
    cards = load_cards(cards_dir)
    if name not in cards:
        raise UnknownCardError(f"no dataset card named {name!r}; known: {', '.join(sorted(cards)) or '(none)'}")
    return cards[name]

