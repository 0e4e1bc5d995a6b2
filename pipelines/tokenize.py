"""Conversations → token ids and labels in an architecture's chat format, images expanded to visual tokens."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tokenizers import Tokenizer

from templates.chat import ChatFormat

IGNORE = -100
IMAGE_TOKEN = "<image>"


@dataclass
class Encoder:
    """Tokenizes conversations for one chat format and one count of visual tokens per image.

    `visual_tokens` is the positions every image takes, or a function of the image reference
    ({"width", "height", ...}) for architectures whose count depends on the image (Qwen2-VL)."""

    tokenizer: Tokenizer
    chat_format: ChatFormat
    visual_tokens: int | Callable[[dict], int]
    loss_on: str = "assistant"  # or "all": every text token, as caption pretraining may want

    def __post_init__(self):
        self._cache: dict[str, list[int]] = {}
        self.image_token_id = self._special(IMAGE_TOKEN)
        self.bos_id = self._special(self.chat_format.bos) if self.chat_format.bos else None  # Qwen and T5 have none
        self.eos_id = self._special(self.chat_format.eos)
        # what a model emits once an answer is done: the first token of the format's end of turn ("\n" after a
        # BLIP-2 OPT answer, "###" in MiniGPT-4's), which is the end-of-sequence token in most formats
        end_of_turn = self._ids(self.chat_format.end_of_turn) if self.chat_format.end_of_turn else []
        self.stop_id = end_of_turn[0] if end_of_turn else self.eos_id

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

    def _count(self, k: int, images: list[dict] | None) -> int:
        if not callable(self.visual_tokens):
            return self.visual_tokens
        if images is None or k >= len(images):
            raise ValueError(f"image {k + 1} of the conversation has no image reference to size it by; "
                             "pass the record's images")
        return self.visual_tokens(images[k])

    def _pieces(self, messages, task, images) -> tuple[list[tuple[list[int], list[int], bool]], int]:
        """(ids, labels, is_target) per chat-format piece, each image expanded to its visual tokens, and
        the number of images."""
        out, images_seen = [], 0
        for text, is_target in self.chat_format.pieces(messages, task=task):
            expanded: list[int] = []
            for token in self._ids(text):
                if token == self.image_token_id:
                    expanded.extend([token] * self._count(images_seen, images))
                    images_seen += 1
                else:
                    expanded.append(token)
            trained = is_target or self.loss_on == "all"
            out.append((expanded, [t if trained and t != self.image_token_id else IGNORE for t in expanded], is_target))
        return out, images_seen

    def encode(self, messages: list[dict], task: str | None = None,
               images: list[dict] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """(input_ids, labels, number of images) for one conversation; labels are not shifted.

        `task` picks the format's task tag (MiniGPT-v2's "[vqa]"); `images` are the record's image
        references, needed where the visual token count depends on the image."""
        if self.chat_format.encoder_decoder:
            raise ValueError(f"chat format {self.chat_format.name} is an encoder-decoder's: use encode_pair")
        ids: list[int] = []
        labels: list[int] = []
        pieces, image_count = self._pieces(messages, task, images)
        for piece_ids, piece_labels, _ in pieces:
            ids.extend(piece_ids)
            labels.extend(piece_labels)
        if labels:
            labels[0] = IGNORE  # the first token of a segment is never predicted from the previous one
        return np.asarray(ids, np.int32), np.asarray(labels, np.int32), image_count

    def encode_pair(self, messages: list[dict], task: str | None = None,
                    images: list[dict] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """(encoder input_ids, decoder target ids, number of images) for an encoder-decoder format: the
        pieces the format marks as context go to the encoder, the answer it marks as target is decoded."""
        if not self.chat_format.encoder_decoder:
            raise ValueError(f"chat format {self.chat_format.name} is a decoder-only LLM's: use encode")
        encoder_ids: list[int] = []
        target: list[int] = []
        pieces, image_count = self._pieces(messages, task, images)
        for piece_ids, _, is_target in pieces:
            (target if is_target else encoder_ids).extend(piece_ids)
        return np.asarray(encoder_ids, np.int32), np.asarray(target, np.int32), image_count

    def encode_prompt(self, messages: list[dict], task: str | None = None, images: list[dict] | None = None) -> np.ndarray:
        """Token ids of a conversation that ends with a user turn, ready for the model to answer."""
        if messages[-1]["role"] != "user":
            raise ValueError("a prompt must end with a user turn")
        if self.chat_format.encoder_decoder:
            return self.encode_pair(messages, task, images)[0]
        return self.encode(messages, task, images)[0]


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
