"""Flex attention on packed rows whose length changes every batch: lengths padded to buckets, one static compile each.

transformers' flex path compiles `flex_attention` with torch.compile's default automatic dynamic shapes:
the second length it sees makes it recompile with a symbolic length, and torch 2.13's CPU flex kernel
does not compile that way (`InductorError: CppCompileError ... 'cur_qSplitSize1' was not declared`).
Packed rows change length every batch, so Loom pads queries, keys and values up to a power-of-two
bucket (at least one 128-token block) and compiles with `dynamic=False`: a run meets a handful of
lengths (128, 256, ..., its seq_len), each compiled once (~15 s on a CPU, cold), and every later batch
of a known bucket reuses its kernel. The padding costs little: each padded query attends to itself
alone, so it adds one diagonal block per 128 padded positions, which flex's block sparsity skips to.

The mask is built at the bucket's lengths by `vlm.packed_masks.document_block_mask`; `bucketed_flex_attention`
reads them from it, so the two cannot disagree. Each new (batch, heads, bucket, head_dim, dtype) is one more
compiled kernel; past torch._dynamo's recompile_limit (8) torch runs flex attention unfused, still exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK = 128  # flex attention's sparse block size: the smallest bucket
ATTENTION_NAME = "loom_bucketed_flex"  # the name the kernel is registered under in transformers' AttentionInterface


def bucket_length(length: int) -> int:
    """The padded length a row of `length` tokens runs at: the next power of two, at least one block."""
    return max(BLOCK, 1 << (max(length, 1) - 1).bit_length())


_compiled_flex = None


def compiled_flex_attention():
    """flex_attention compiled once per process with static shapes (one kernel per bucket)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def bucketed_flex_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function signature: query (B, Hq, L, D), key and value (B, Hkv, Lk, D), the
    BlockMask of `document_block_mask`; returns (B, L, Hq, D), as transformers expects, and no weights."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if not isinstance(attention_mask, BlockMask):
        raise ValueError("flex attention needs the BlockMask Loom's model builds from document ids "
                         f"(got {type(attention_mask).__name__}); call the model, not the LLM alone")
    if dropout and module.training:
        raise ValueError(f"flex attention has no attention dropout ({dropout}); set it to 0 or use sdpa")
    q_len, k_len = query.shape[2], key.shape[2]
    q_bucket, k_bucket = attention_mask.seq_lengths
    query = F.pad(query, (0, 0, 0, q_bucket - q_len))  # (B, Hq, q_bucket, D): padded rows are zeros
    key, value = F.pad(key, (0, 0, 0, k_bucket - k_len)), F.pad(value, (0, 0, 0, k_bucket - k_len))
    # inside a compiled model (TrainConfig.compile) the outer compile fuses flex itself
    kernel = flex_attention if torch.compiler.is_compiling() else compiled_flex_attention()
    out = kernel(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out[:, :, :q_len].transpose(1, 2).contiguous(), None  # (B, L, Hq, D)
