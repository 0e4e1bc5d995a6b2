"""MiniGPT-v2's connector: every 4 adjacent patch features concatenated, then one Linear into the LLM.

MiniGPT-v2 (arXiv 2310.09478, Method: model architecture) feeds 448 px images to a frozen EVA-CLIP ViT-g/14,
whose 32 x 32 = 1024 patch features are too many for the LLM's context; it concatenates each run of 4
adjacent tokens into one and projects the result, leaving 256 visual tokens.

Layout read from Vision-CAIR/MiniGPT-4 minigpt4/models/minigpt_v2.py (MiniGPTv2.__init__, encode_img):
- image_embeds = ln_vision(visual_encoder(image)), then `[:, 1:, :]`: the CLS token is dropped first,
  so P counts patch tokens only. (ln_vision, a LayerNorm on the ViT width, is created with the vision
  encoder in minigpt4/models/base_model.py init_vision_encoder; it belongs to the vision side, not here.)
- `image_embeds.view(bs, pn / 4, hs * 4)`: a row-major reshape, so output token k is
  [x_{4k} | x_{4k+1} | x_{4k+2} | x_{4k+3}], the four neighbours *in the flattened sequence* (four patches of
  one row of the 32-wide grid, not a 2 x 2 square), token 4k's channels first.
- `llama_proj = nn.Linear(visual_encoder.num_features * 4, llama hidden size)` (EVA ViT-g: 1408 * 4 = 5632
  -> 4096 for Llama-2-7B), with bias.

Checkpoint keys: MiniGPT-v2 `llama_proj.{weight,bias}` -> `linear_1.{weight,bias}`, the same rule as
MiniGPT-4's llama_proj -> LinearProjector.linear_1 (see projector.py).
"""

from __future__ import annotations

import torch
from torch import nn


class ConcatProjector(nn.Module):
    """Groups `group` consecutive vision tokens into one (features concatenated) and projects it to the LLM."""

    def __init__(self, vision_size: int, llm_size: int, group: int = 4):
        super().__init__()
        if group < 1:
            raise ValueError(f"group {group}: must merge at least one token (MiniGPT-v2 merges 4)")
        self.group = group
        self.linear_1 = nn.Linear(vision_size * group, llm_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, num_patches, width = features.shape  # (N, P, D)
        if num_patches % self.group:
            raise ValueError(
                f"image features hold {num_patches} tokens, not a multiple of group {self.group}; pass patch "
                f"tokens only (MiniGPT-v2 drops the CLS token first: 1024 patches at 448 px / patch 14)"
            )
        merged = features.reshape(batch, num_patches // self.group, width * self.group)  # (N, P/4, 4D)
        return self.linear_1(merged)  # (N, P/4, llm_size)
