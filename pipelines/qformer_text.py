"""What a Q-Former reads of a conversation, in its own (BERT) vocabulary: InstructBLIP's instruction or
BLIP-2's caption, as [CLS] ids [SEP]."""
from __future__ import annotations

from pipelines.tokenize import load_tokenizer

QFORMER_TEXTS = ("caption", "instruction")


def qformer_text(messages: list[dict], kind: str) -> str:
    """What the Q-Former reads of a conversation: the instruction (InstructBLIP: the first user turn's text,
    image marks left out) or the caption (BLIP-2's stage 1: the first answer)."""
    role = "user" if kind == "instruction" else "assistant"
    first = next((m["content"] for m in messages if m["role"] == role), "")
    return " ".join(first.replace("<image>", " ").split())


def qformer_pad(tokenizer) -> int:
    """The Q-Former tokenizer's padding id: BERT's [PAD], or the <pad> of one trained here."""
    pad = tokenizer.token_to_id("[PAD]")
    return pad if pad is not None else tokenizer.token_to_id("<pad>")


class QFormerInstructions:
    """Instruction text -> [CLS] ids [SEP] in the Q-Former's vocabulary, at most max_length ids."""

    def __init__(self, tokenizer_dir: str, max_length: int):
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.cls, self.sep = (self.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]"))
        self.pad = qformer_pad(self.tokenizer)
        if self.cls is None or self.sep is None:
            raise ValueError(f"{tokenizer_dir}: the Q-Former tokenizer has no [CLS] / [SEP] token; give a BERT "
                             "tokenizer folder (e.g. the qformer_tokenizer folder of an InstructBLIP checkpoint)")
        self.max_length = max_length

    def __call__(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids[: self.max_length - 2]
        return [self.cls, *ids, self.sep]
