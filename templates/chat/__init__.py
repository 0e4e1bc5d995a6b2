"""Chat formats: how a conversation is laid out as text for one architecture's LLM."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

FORMATS_DIR = Path(__file__).parent


@dataclass(frozen=True)
class ChatFormat:
    """The text pieces of a conversation, each marked as trained on or not.

    Each piece starts at a word boundary, so tokenizing piece by piece gives the same ids
    as tokenizing the whole text: the prompt used at evaluation matches training exactly.
    """

    name: str
    bos: str
    eos: str
    system: str
    system_suffix: str
    user: str
    assistant: str
    end_of_turn: str

    def pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """(text, is_target) pieces for a conversation; a trailing user turn leaves the assistant to answer."""
        out: list[tuple[str, bool]] = [(self.bos, False)]
        if self.system:
            out.append((self.system + self.system_suffix, False))
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "user":
                out.append((self.user.format(content=content), False))
            elif role == "assistant":
                out.append((self.assistant.format(content=content), True))
                out.append((self.end_of_turn, True))
            else:
                raise ValueError(f"message {i}: role {role!r}; expected 'user' or 'assistant'")
        return out

    def strings(self) -> list[str]:
        """Every fixed string of the format, for training a tokenizer that knows them."""
        return [self.system, self.user.format(content=""), self.assistant.format(content="")]


@lru_cache(maxsize=None)
def get_chat_format(name: str) -> ChatFormat:
    path = FORMATS_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in FORMATS_DIR.glob("*.yaml"))
        raise ValueError(f"unknown chat format {name!r}; known: {known}")
    return ChatFormat(**yaml.safe_load(path.read_text()))
