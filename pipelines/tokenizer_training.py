"""Train a byte-level BPE tokenizer on a corpus, saved so that transformers loads it as a fast tokenizer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipelines.manifest import write_atomic

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path, bos: str = "<s>", eos: str = "</s>") -> Tokenizer:
    """Byte-level BPE (any script, no unknown bytes) with Loom's special tokens, written to `out_dir`.

    `bos` and `eos` are the chat format's ("" for a format without BOS); a format's own end-of-turn token
    (Qwen's "<|im_end|>") becomes a special token too, so it is one id as the architecture expects."""
    special = SPECIAL_TOKENS + [t for t in (bos, eos) if t and t not in SPECIAL_TOKENS]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "tokenizer.json", tokenizer.to_str())
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos or None,
        "eos_token": eos,
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "extra_special_tokens": {"image_token": "<image>"},
        "model_max_length": 4096,
        "padding_side": "right",
    }
    write_atomic(out / "tokenizer_config.json", json.dumps(config, indent=2))
    write_atomic(out / "special_tokens_map.json", json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2))
    return tokenizer
