"""Qwen-VL's vision transformer as Qwen-VL ships it: no CLS token, its own attention and MLP layout.

Read from Qwen-VL's modeling code (`visual.py`, class `VisionTransformer`, shipped beside `modeling_qwen.py`
in the checkpoint folder on huggingface.co/Qwen/Qwen-VL), in the order it runs:
1. `conv1`: Conv2d(3, width, patch, stride=patch, bias=False); the patch grid flattened row by row.
2. `+ positional_embedding`: a (256, width) table, 256 in the code whatever the image size (the 16 x 16 grid
   of 224 px), resized by `get_abs_pos` to the image's sqrt(P) x sqrt(P) grid (bicubic, align_corners=False,
   in float32); at 448 px the 32 x 32 grid always reads an interpolated table. There is no class token.
3. `ln_pre`, then `transformer.resblocks`, each a `VisualAttentionBlock`: x = x + attn(ln_1(x)), then
   x = x + mlp(ln_2(x)), the MLP `c_fc` -> GELU (exact, nn.GELU) -> `c_proj`, mlp width int(width * mlp_ratio).
   Every LayerNorm has eps 1e-6 (visual.py's `partial(nn.LayerNorm, eps=1e-6)`).
4. `attn_pool` (the Resampler), `ln_post` and `@ proj`: Loom's connector slot,
   `vlm.connectors.resampler.QwenResampler`, which reads this tower's last hidden state as visual.py does.

`VisualAttention`: `in_proj` = Linear(width, 3 * width) with bias, whose output is laid out per head
([q_h, k_h, v_h] for each head h: it is viewed as (..., heads, 3 * head_dim) and split), not as
nn.MultiheadAttention's [q, k, v]; scores q / sqrt(head_dim) @ k^T, softmax over every patch (no mask);
`out_proj` = Linear(width, width) with bias.

Parameter names are the checkpoint's: `transformer.visual.X` is this module's `X` (conv1.weight,
positional_embedding, ln_pre.*, transformer.resblocks.N.{ln_1, attn.in_proj, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}.*), so a published tower loads by its prefix alone (`vlm.qwen_vl_published`, `train.init.vision`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .connectors.resampler import resize_pos_embed

POSITIONS = 256  # visual.py: nn.Parameter(scale * torch.randn(256, width)), whatever the image size
LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class QwenVLVisionConfig:
    """The tower's shape in Loom's (transformers-style) names; Qwen-VL's config.json calls them
    visual.width, visual.mlp_ratio (intermediate_size = int(width * mlp_ratio)), visual.layers and visual.heads."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"Qwen-VL vision tower: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")


class VisualAttention(nn.Module):
    """Self-attention over every patch, with Qwen-VL's fused per-head `in_proj`."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        fused = self.in_proj(x).view(batch, length, self.heads, 3 * self.head_dim)  # (N, P, H, 3 hd): q, k, v per head
        query, key, value = (t.transpose(1, 2) for t in fused.split(self.head_dim, dim=-1))  # each (N, H, P, hd)
        context = F.scaled_dot_product_attention(query, key, value)  # scale 1 / sqrt(hd), as visual.py's norm_factor
        return self.out_proj(context.transpose(1, 2).reshape(batch, length, width))  # (N, P, width)


class VisualAttentionBlock(nn.Module):
    """A pre-norm transformer block: attention, then a GELU MLP, each added to its input."""

    def __init__(self, width: int, heads: int, mlp_width: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = VisualAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, mlp_width)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(mlp_width, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class QwenVLVisionTransformer(nn.Module):
    """Qwen-VL's ViT up to its last block: pixels (N, 3, H, W) to patch features (N, P, width), no CLS token."""

    def __init__(self, config: QwenVLVisionConfig | dict):
        super().__init__()
        config = config if isinstance(config, QwenVLVisionConfig) else QwenVLVisionConfig(**config)
        self.config = config
        width, patch = config.hidden_size, config.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(POSITIONS, width))  # (256, width)
        self.ln_pre = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.transformer = nn.ModuleDict({"resblocks": nn.ModuleList(
            VisualAttentionBlock(width, config.num_attention_heads, config.intermediate_size)
            for _ in range(config.num_hidden_layers))})
        self.gradient_checkpointing = False

    def activation_checkpointing_enable(self) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them."""
        self.gradient_checkpointing = True

    def forward(self, pixel_values: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """(N, P, width) hidden state `layer`, counted as transformers counts hidden states: 0 is the
        embeddings after ln_pre, k the output of block k, -1 the last block's (what Qwen-VL's resampler reads)."""
        blocks = self.transformer["resblocks"]
        depth = layer + len(blocks) + 1 if layer < 0 else layer
        if not 0 <= depth <= len(blocks):
            raise ValueError(f"vision_feature_layer {layer}: Qwen-VL's tower has {len(blocks)} blocks, so hidden "
                             f"states 0..{len(blocks)} (or -{len(blocks) + 1}..-1)")
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype))  # (N, width, H/patch, W/patch)
        x = x.flatten(2).transpose(1, 2)  # (N, P, width), row-major patches
        x = x + resize_pos_embed(self.positional_embedding, x.shape[1]).to(x.dtype)  # visual.py's get_abs_pos
        x = self.ln_pre(x)
        for block in blocks[:depth]:
            x = checkpoint(block, x, use_reentrant=False) if self.gradient_checkpointing and self.training else block(x)
        return x
