"""Qwen-VL's position-aware adapter: 256 learned queries cross-attend once to the ViT's patch features.

Qwen-VL (arXiv 2308.12966, Model Architecture: position-aware vision-language adapter) compresses a
variable number of patch features into a fixed 256 tokens with one cross-attention layer whose queries are
trainable embeddings and whose keys are the image features; 2D absolute positions enter the query-key pairs
so the compression keeps where things are.

Layout of Qwen-VL's `visual.py` (it lives on huggingface.co/Qwen/Qwen-VL, not in QwenLM/Qwen-VL), read in
its ports vllm-project/vllm vllm/model_executor/models/qwen_vl.py and vllm/model_executor/layers/resampler.py,
in verbatim copies of visual.py, and in printed module trees of the released model (kv_proj 1664 -> 4096):
- `Resampler(grid_size=16, embed_dim=output_dim, num_heads=output_dim // 128, kv_dim=width,
  norm_layer=LayerNorm(eps=1e-6))`; Qwen-VL's sizes are output_dim 4096, width 1664, so 32 heads of 128.
- `query` (256, D), truncated normal std 0.02; `pos_embed` (256, D), the fixed 2D sin-cos table of
  `get_2d_sincos_pos_embed` (MAE's, facebookresearch/mae util/pos_embed.py), never trained.
- `kv_proj = Linear(kv_dim, D, bias=False)`, an identity when kv_dim == D; then `ln_kv`.
- `attn = nn.MultiheadAttention(D, num_heads)`; query = ln_q(query) + pos_embed;
  key = ln_kv(kv_proj(x)) + get_abs_pos(pos_embed, P); value = ln_kv(kv_proj(x)): values carry no position.
- `get_abs_pos` resizes the 16x16 table to the image's sqrt(P) x sqrt(P) grid (bicubic, align_corners=False,
  computed in float32) for the keys only; the queries always use the stored 256 entries. At Qwen-VL's 448 px
  and patch 14 the ViT gives 32x32 = 1024 patches, so the keys' table is always interpolated there.
- Linear layers (kv_proj, attn.out_proj) are initialised truncated normal std 0.02 with zero bias.
- `ln_post` and `proj` (a (D, D) matrix, init D**-0.5 * randn, applied as `x @ proj`) are NOT in the
  reference's Resampler: they belong to its VisionTransformer, which runs attn_pool -> ln_post -> @ proj.
  Loom's vision slot is a plain ViT that stops at its last hidden state, so this connector carries both,
  and its output is exactly what Qwen-VL writes into the LLM's image positions.

Checkpoint keys, Qwen-VL -> QwenResampler (same tensors, same shapes):
  transformer.visual.attn_pool.{query, pos_embed, kv_proj.weight, attn.in_proj_weight, attn.in_proj_bias,
      attn.out_proj.weight, attn.out_proj.bias, ln_q.*, ln_kv.*}  -> the same names without the prefix
  transformer.visual.ln_post.*, transformer.visual.proj          -> ln_post.*, proj
`pos_embed` is a buffer here (a frozen nn.Parameter in the reference): Loom unfreezes a whole slot with
requires_grad_(True), which would otherwise start training a table that the paper keeps fixed.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

QWEN_HEAD_SIZE = 128  # visual.py: num_heads = output_dim // 128


def sincos_pos_embed_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M, embed_dim) sin-cos code of M positions: [sin(p * w_i) for i] then [cos(p * w_i) for i].

    w_i = 10000 ** (-i / (embed_dim / 2)) for i in 0 .. embed_dim/2 - 1, as in MAE's pos_embed.py.
    """
    if embed_dim % 2:
        raise ValueError(f"sin-cos positions need an even width, got {embed_dim}")
    frequencies = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))
    angles = positions.to(torch.float64).reshape(-1, 1) * frequencies  # (M, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (M, D)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size**2, embed_dim) fixed 2D table; row-major tokens, column code first, then row code.

    MAE builds the grid with np.meshgrid(grid_w, grid_h), so the plane it encodes first (and calls
    `emb_h`) holds the *column* index; the first embed_dim/2 channels therefore say which column a
    token is in and the last embed_dim/2 which row. Kept that way so the table equals the checkpoint's.
    """
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos positions split the width in four; {embed_dim} is not a multiple of 4")
    index = torch.arange(grid_size * grid_size)
    row, column = index // grid_size, index % grid_size  # token m sits at (m // G, m % G)
    table = torch.cat(
        [sincos_pos_embed_1d(embed_dim // 2, column), sincos_pos_embed_1d(embed_dim // 2, row)], dim=1
    )  # (G*G, D)
    return table.float()


def resize_pos_embed(pos_embed: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(num_tokens, D) the square table resized to a sqrt(num_tokens)-wide grid: Qwen-VL's `get_abs_pos`."""
    source = math.isqrt(pos_embed.shape[0])
    target = math.isqrt(num_tokens)
    if target * target != num_tokens:
        raise ValueError(
            f"image features hold {num_tokens} tokens, not a square grid; the resampler places keys on a "
            f"sqrt(P) x sqrt(P) grid, so pass patch tokens only (drop any CLS token) from a square image"
        )
    if source == target:
        return pos_embed
    grid = pos_embed.float().reshape(1, source, source, -1).permute(0, 3, 1, 2)  # (1, D, G, G)
    grid = F.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False)  # (1, D, g, g)
    return grid.permute(0, 2, 3, 1).reshape(num_tokens, -1).to(pos_embed.dtype)  # (P, D)


class QwenResampler(nn.Module):
    """Qwen-VL's visual adapter: patch features (N, P, kv_dim) to a fixed (N, num_queries, embed_dim)."""

    def __init__(self, embed_dim: int, kv_dim: int, num_queries: int = 256, num_heads: int | None = None):
        super().__init__()
        grid_size = math.isqrt(num_queries)
        if grid_size * grid_size != num_queries:
            raise ValueError(f"num_queries {num_queries}: the queries sit on a square grid (Qwen-VL: 16 x 16 = 256)")
        if num_heads is None:
            num_heads = embed_dim // QWEN_HEAD_SIZE
            if num_heads == 0:
                raise ValueError(
                    f"embed_dim {embed_dim} is narrower than Qwen-VL's {QWEN_HEAD_SIZE}-wide heads; pass num_heads"
                )
        self.embed_dim = embed_dim
        self.num_queries = num_queries
        layer_norm = partial(nn.LayerNorm, eps=1e-6)

        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid_size))  # (Q, D)
        self.query = nn.Parameter(torch.empty(num_queries, embed_dim))  # (Q, D)
        # The reference skips the projection when the widths already agree.
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = layer_norm(embed_dim)
        self.ln_kv = layer_norm(embed_dim)
        self.ln_post = layer_norm(embed_dim)
        self.proj = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim, embed_dim))  # (D, D)

        nn.init.trunc_normal_(self.query, std=0.02)
        for module in (self.kv_proj, self.attn.out_proj):
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, num_patches, _ = features.shape
        values = self.ln_kv(self.kv_proj(features))  # (N, P, D)
        # Positions go on the query-key pairs only (the paper's adapter): they steer where each query
        # looks, while what it reads back (the values) stays pure image content.
        keys = values + resize_pos_embed(self.pos_embed, num_patches).to(values.dtype)  # (N, P, D)
        queries = (self.ln_q(self.query) + self.pos_embed.to(self.query.dtype)).expand(batch, -1, -1)  # (N, Q, D)
        pooled, _ = self.attn(queries, keys, values, need_weights=False)  # (N, Q, D)
        return self.ln_post(pooled) @ self.proj  # (N, Q, D)
