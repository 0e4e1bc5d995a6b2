"""How a packed row keeps its samples apart: document ids, positions, targets and the attention masks.

A packed row holds several samples. Attention is causal *and* block-diagonal per sample, enforced by an
explicit mask built from document ids (one id per sample) rather than left to transformers' inference from
position_ids (that inference is silently skipped whenever a KV cache object exists, which the LLMs create
by default when `use_cache` is not False). Each attention mode gets the mask in its own form: sdpa a bool
tensor, eager an additive one, flex attention a BlockMask at bucketed lengths (vlm.flex), flash-attn's
varlen kernel the cumulative segment lengths; an encoder-decoder LLM (FlanT5) gets three masks, encoder,
decoder and cross-attention, segment k of one side seeing segment k of the other only.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .flex import bucket_length

ATTENTION_MODES = ("sdpa", "eager", "flex_attention", "segment_sdpa", "flash_attention_2")


def segment_bounds(document_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """(start, end) of every run of equal document ids, per row: the samples of a packed row."""
    bounds = []
    for row in document_ids.tolist():
        starts = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1]]
        bounds.append(list(zip(starts, starts[1:] + [len(row)])))
    return bounds


def varlen_kwargs(document_ids: torch.Tensor) -> dict[str, Any]:
    """flash-attn's variable-length arguments for packed rows: every segment of every row (padding
    included) as one sequence of the flattened (B * L) batch, so no token attends outside its sample."""
    lengths = [e - s for row in segment_bounds(document_ids) for s, e in row]
    cu_seqlens = torch.tensor([0, *lengths], dtype=torch.int32, device=document_ids.device).cumsum(0, dtype=torch.int32)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": longest, "max_length_k": longest}


def document_ids_from_segments(
    segment_lengths: Sequence[Sequence[int]] | torch.Tensor, length: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(B, L) segment index of every position; a row's tail beyond its segments is one more segment (padding)."""
    rows = segment_lengths.tolist() if isinstance(segment_lengths, torch.Tensor) else segment_lengths
    document_ids = torch.empty(len(rows), length, dtype=torch.long)
    for b, lengths in enumerate(rows):
        lengths = [int(n) for n in lengths if int(n) > 0]
        total = sum(lengths)
        if total > length:
            raise ValueError(f"row {b}: segment_lengths sum to {total}, more than the {length} positions in input_ids")
        if total < length:
            lengths.append(length - total)
        document_ids[b] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return document_ids.to(device) if device is not None else document_ids


def positions_from_document_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) position of every token inside its own segment: restarts at 0 at each segment start."""
    index = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    is_start = torch.ones_like(document_ids, dtype=torch.bool)
    is_start[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    segment_start = torch.where(is_start, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - segment_start


def shifted_targets(labels: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """(B, L-1) the label each position predicts; -100 across a segment boundary.

    Labels are unshifted (token t predicts label t+1). A boundary is masked even if a
    packer forgot to mask a segment's first token: nothing is predicted across samples.
    """
    targets = labels[:, 1:].clone()
    targets[document_ids[:, 1:] != document_ids[:, :-1]] = -100
    return targets


def build_attention_mask(
    query_document_ids: torch.Tensor,
    key_document_ids: torch.Tensor,
    mode: str = "sdpa",
    query_offset: int = 0,
):
    """The causal, block-diagonal mask in the form attention `mode` expects.

    Query i (absolute index i + query_offset in the key sequence) sees key j iff both are
    in the same document and j <= i. Every query sees at least itself, so no row is
    fully masked (which would give NaNs). sdpa gets a (B, 1, Lq, Lk) bool tensor, eager
    an additive float tensor (eager *adds* the mask, so a bool one would be silently
    wrong), flex_attention a BlockMask built once per batch and shared by all layers, at the
    lengths padded to a bucket (vlm.flex).
    """
    if mode == "flex_attention":
        return document_block_mask(query_document_ids, key_document_ids, query_offset)
    q_len, k_len = query_document_ids.shape[1], key_document_ids.shape[1]
    device = query_document_ids.device
    q_index = torch.arange(q_len, device=device) + query_offset
    k_index = torch.arange(k_len, device=device)
    allowed = (query_document_ids[:, :, None] == key_document_ids[:, None, :]) & (
        k_index[None, None, :] <= q_index[None, :, None]
    )  # (B, Lq, Lk)
    allowed = allowed[:, None]  # (B, 1, Lq, Lk): one mask for all heads
    if mode == "sdpa":
        return allowed
    if mode == "eager":
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    raise ValueError(f"attention mode {mode!r} is not one of {ATTENTION_MODES}")


def document_block_mask(query_document_ids: torch.Tensor, key_document_ids: torch.Tensor, query_offset: int = 0):
    """The causal, block-diagonal BlockMask of packed rows, at bucketed lengths.

    Query i (absolute index i + query_offset among the keys) sees key j iff both are in the same document
    and j <= i + query_offset. A padded query sees only the key at its own absolute index (itself, or a
    padded key): no row is fully masked and the padding adds no off-diagonal work."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, q_len = query_document_ids.shape
    q_bucket = bucket_length(q_len)
    # keys reach at least every padded query's own absolute index
    k_bucket = bucket_length(max(key_document_ids.shape[1], q_bucket + query_offset))
    # padded queries and padded keys in documents of their own (-1, -2) that nothing else is in
    query_docs = F.pad(query_document_ids, (0, q_bucket - q_len), value=-1)
    key_docs = F.pad(key_document_ids, (0, k_bucket - key_document_ids.shape[1]), value=-2)

    def document_causal(b, h, q, k):
        same_document = (query_docs[b, q] == key_docs[b, k]) & (k <= q + query_offset)
        return same_document | ((query_docs[b, q] == -1) & (k == q + query_offset))

    return create_block_mask(document_causal, batch, None, q_bucket, k_bucket, device=query_document_ids.device)


def segment_attention_mask(
    query_document_ids: torch.Tensor,
    key_document_ids: torch.Tensor,
    mode: str = "sdpa",
    causal: bool = False,
    key_is_real: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
):
    """The mask in the form attention `mode` expects: query i sees key j iff both are in the same segment
    (and j <= i when `causal`, and key j is real when `key_is_real` (B, Lk) is given).

    A query that would see no key at all (padding, or a decoder segment with no encoder segment) sees
    every key instead: its output is never used, and a fully masked row would give NaNs in some kernels.
    sdpa gets a (B, 1, Lq, Lk) bool tensor, eager an additive one in the model's `dtype` (eager adds the
    mask to scores that already carry the position bias, so a bool or float32 mask would be wrong).
    """
    allowed = query_document_ids[:, :, None] == key_document_ids[:, None, :]  # (B, Lq, Lk)
    if causal:
        q_len, k_len = allowed.shape[1:]
        allowed = allowed & torch.ones(q_len, k_len, dtype=torch.bool, device=allowed.device).tril()
    if key_is_real is not None:
        allowed = allowed & key_is_real.bool()[:, None, :]
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    if mode == "sdpa":
        return allowed[:, None]  # (B, 1, Lq, Lk): one mask for all heads
    if mode == "eager":
        return torch.zeros(allowed[:, None].shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed[:, None], torch.finfo(dtype).min)
    raise ValueError(f"attention mode {mode!r}: this mask comes as sdpa's or eager's")
