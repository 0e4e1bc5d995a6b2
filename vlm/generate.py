"""Generation for evaluation: greedy and beam search, for decoder-only and encoder-decoder LLMs.

Prompts are token ids with each image already expanded to its visual tokens, batched with left
padding. Greedy decoding of a decoder-only model is Loom's own loop over its forward pass with a KV
cache: the mask is the document-id mask training uses, left padding a document of its own, so a
padding query still sees itself (no fully masked rows, no NaNs) and real tokens never see padding.
Beam search, and any decoding of an encoder-decoder LLM, hands the spliced input embeddings to the
language model's own transformers `generate`, which owns the beams and the cache.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Sequence

import torch
from transformers import DynamicCache

from .model import VisionLanguageModel
from .packed_masks import build_attention_mask

PADDING, PROMPT = 0, 1  # document ids during generation


@contextmanager
def _dense_attention(model: VisionLanguageModel):
    """sdpa for the duration: one-token decode steps gain nothing from flex attention (each would run
    padded to a 128-query bucket, vlm.flex) and segment_sdpa works on whole samples, not a cache; sdpa
    computes the same attention from the same document ids."""
    mode = model.attn_implementation
    if mode in ("flex_attention", "segment_sdpa", "flash_attention_2"):
        model.set_attention("sdpa")
    try:
        yield
    finally:
        if model.attn_implementation != mode:
            model.set_attention(mode)


def _left_padded(prompts: Sequence[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, document_ids), both (B, L): prompts right-aligned, padding a document of its own."""
    batch, length = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long, device=device)
    document_ids = torch.full((batch, length), PADDING, dtype=torch.long, device=device)
    for b, ids in enumerate(prompts):
        input_ids[b, length - len(ids):] = torch.tensor(ids, device=device)
        document_ids[b, length - len(ids):] = PROMPT
    return input_ids, document_ids


@torch.no_grad()
def generate(
    model: VisionLanguageModel,
    prompts: Sequence[list[int]],
    pixel_values: torch.Tensor | None,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int = 8,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    **image_inputs,
) -> list[list[int]]:
    """Continuations (eos excluded) of token-id prompts: greedy, or beam search with num_beams > 1.

    `image_inputs` are what a preset's connector reads besides pixels (InstructBLIP's
    qformer_input_ids and qformer_attention_mask, one row per image)."""
    if num_beams == 1 and not model.preset.encoder_decoder:
        with _dense_attention(model):
            return _greedy(model, prompts, pixel_values, eos_token_id, pad_token_id, max_new_tokens, use_cache,
                           **image_inputs)
    device = next(model.parameters()).device
    input_ids, document_ids = _left_padded(prompts, pad_token_id, device)
    attention_mask = (document_ids == PROMPT).long()
    settings = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, length_penalty=length_penalty,
                    eos_token_id=eos_token_id, pad_token_id=pad_token_id, bad_words_ids=[[model.image_token_id]])
    with _dense_attention(model):
        if hasattr(model, "transformers_generate"):  # positions the LLM alone cannot derive (Qwen2-VL's M-RoPE)
            out = model.transformers_generate(input_ids, attention_mask, pixel_values, **image_inputs, **settings)
        else:
            embeds = model.embed(input_ids, pixel_values, **image_inputs)  # (B, L, D)
            out = model.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **settings)
    # A decoder-only model given only embeddings returns the new tokens; an encoder-decoder model
    # returns its decoder sequence, which starts with the decoder start token.
    start = 1 if model.preset.encoder_decoder else 0
    return [_until_eos(row[start:], eos_token_id, pad_token_id) for row in out.tolist()]


def _until_eos(ids: list[int], eos_token_id: int, pad_token_id: int) -> list[int]:
    return ids[:ids.index(eos_token_id)] if eos_token_id in ids else [t for t in ids if t != pad_token_id]


def _greedy(model, prompts, pixel_values, eos_token_id, pad_token_id, max_new_tokens, use_cache, **image_inputs):
    """Greedy continuations (eos excluded) of token-id prompts, left-padded into one batch."""
    device = next(model.parameters()).device
    batch = len(prompts)
    input_ids, document_ids = _left_padded(prompts, pad_token_id, device)
    # Positions count real tokens only, so a left-padded prompt is encoded exactly as alone.
    positions = (document_ids == PROMPT).long().cumsum(-1).sub(1).clamp(min=0)  # (B, L)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    mode = model.attn_implementation
    cache = DynamicCache(config=model.language_model.config) if use_cache else None
    with autocast:
        output = model(
            input_ids, pixel_values, position_ids=positions, document_ids=document_ids, cache=cache,
            attention_mask=build_attention_mask(document_ids, document_ids, mode), logits_to_keep=1, **image_inputs,
        )
    generated = [[] for _ in range(batch)]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        logits = output.logits[:, -1]  # (B, V)
        # <image> is an input placeholder, never an answer (and fed back it would ask for pixels).
        logits[:, model.image_token_id] = float("-inf")
        next_token = logits.argmax(-1)  # (B,)
        for b, token in enumerate(next_token.tolist()):
            if not finished[b] and token != eos_token_id:
                generated[b].append(token)
        finished |= next_token == eos_token_id
        if bool(finished.all()):
            break
        next_position = positions[:, -1:] + 1  # (B, 1)
        positions = torch.cat([positions, next_position], dim=1)
        document_ids = torch.cat([document_ids, torch.full_like(next_position, PROMPT)], dim=1)
        if use_cache:
            step_ids = next_token[:, None]  # (B, 1): only the new token, earlier keys come from the cache
            mask = build_attention_mask(document_ids[:, -1:], document_ids, mode, query_offset=document_ids.shape[1] - 1)
            with autocast:
                output = model(step_ids, None, position_ids=next_position, document_ids=document_ids[:, -1:],
                               cache=output.cache, attention_mask=mask, logits_to_keep=1)
        else:
            # Recompute the whole sequence: slow, the reference the cached path must agree with.
            input_ids = torch.cat([input_ids, next_token[:, None]], dim=1)
            with autocast:
                output = model(input_ids, pixel_values, position_ids=positions, document_ids=document_ids,
                               attention_mask=build_attention_mask(document_ids, document_ids, mode), logits_to_keep=1,
                               **image_inputs)
    return generated


