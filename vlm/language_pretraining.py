"""Pretraining a preset's LLM on text alone, so that a frozen-LLM architecture starts from a real language
model, as BLIP-2 starts from OPT or FlanT5 and MiniGPT-4 from Vicuna.

The stage is the staged trainer's own (vlm.train): the `llm` group alone learns, on packed text in the
preset's chat format, and the rest of the model (never fed an image) stays as built. `save_language_model`
writes the LLM as a transformers checkpoint folder (`AutoModelForCausalLM` / `T5ForConditionalGeneration`
read it), which `train.init.llm` loads; `answer` is greedy decoding of text prompts, to score what it
learned.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .generate import generate
from .preset import Stage
from .saving import save_beside

# the LLM alone, on the pack output "text"; the learning rate is the caller's
LANGUAGE_STAGE = Stage("language", trainable=("llm",), data="text", lr=1e-3, warmup_ratio=0.03)


def answer(model, prompts: Sequence[list[int]], stop_id: int, max_new_tokens: int = 8,
           batch_size: int = 64) -> list[list[int]]:
    """Greedy continuations (up to `stop_id`) of text-only prompts: token ids with no image in them."""
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        out += generate(model, prompts[start:start + batch_size], None, stop_id, model.pad_token_id, max_new_tokens)
    return out


def save_language_model(model, path: str | Path) -> Path:
    """The LLM of `model` as a transformers checkpoint folder at `path` (config.json, model.safetensors,
    generation_config.json), each file written whole before it replaces the one of that name."""
    return save_beside(model.language_model, path)
