"""Conversations → token ids and labels in an architecture's chat format, images expanded to visual tokens."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from templates.chat import ChatFormat

IGNORE = -100
IMAGE_TOKEN = "<image>"


@dataclass
class Encoder:
    """Tokenizes conversations for one chat format and one count of visual tokens per image."""

    tokenizer: Tokenizer
    chat_format: ChatFormat
    visual_tokens: int
    loss_on: str = "assistant"  # or "all": every text token, as caption pretraining may want

    def __post_init__(self):
        self.image_token_id = self._special(IMAGE_TOKEN)
        self.bos_id = self._special(self.chat_format.bos)
        self.eos_id = self._special(self.chat_format.eos)
        self._cache: dict[str, list[int]] = {}

    def _special(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the tokenizer has no {token!r} token; add it as a special token")
        return token_id

    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            if len(self._cache) < 100_000:  # system prompts and template text repeat endlessly
                self._cache[text] = ids
        return ids

    def encode(self, messages: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
        """(input_ids, labels, number of images) for one conversation; labels are not shifted."""
        ids: list[int] = []
        labels: list[int] = []
        images = 0
        for text, is_target in self.chat_format.pieces(messages):
            piece = self._ids(text)
            expanded: list[int] = []
            for token in piece:
                if token == self.image_token_id:
                    expanded.extend([token] * self.visual_tokens)
                    images += 1
                else:
                    expanded.append(token)
            ids.extend(expanded)
            trained = is_target or self.loss_on == "all"
            labels.extend(t if trained and t != self.image_token_id else IGNORE for t in expanded)
        labels[0] = IGNORE  # the first token of a segment is never predicted from the previous one
        return np.asarray(ids, np.int32), np.asarray(labels, np.int32), images

    def encode_prompt(self, messages: list[dict]) -> np.ndarray:
        """Token ids of a conversation that ends with a user turn, ready for the model to answer."""
        if messages[-1]["role"] != "user":
            raise ValueError("a prompt must end with a user turn")
        return self.encode(messages)[0]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A fast tokenizer from a local folder holding tokenizer.json (any Hugging Face fast tokenizer)."""
    file = Path(path) / "tokenizer.json"
    if not file.exists():
        raise FileNotFoundError(
            f"{path}: no tokenizer.json; give a folder saved by a Hugging Face fast tokenizer, "
            "or set pack.tokenizer.train to train one on the corpus"
        )
    return Tokenizer.from_file(str(file))


def tokenizer_special_tokens(path: str | Path) -> dict:
    config = Path(path) / "tokenizer_config.json"
    return json.loads(config.read_text()) if config.exists() else {}
