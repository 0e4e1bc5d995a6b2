"""Token-for-token connectors: each vision feature becomes one LLM embedding (LLaVA, LLaVA-1.5, MiniGPT-4).

Facts and where they were read:
- haotian-liu/LLaVA llava/model/multimodal_projector/builder.py (build_vision_projector):
  `mm_projector_type: linear` (LLaVA v1, the default) is a single nn.Linear(mm_hidden_size -> hidden_size),
  so its checkpoint keys are `model.mm_projector.weight` / `.bias`. `mlp{N}x_gelu` is an nn.Sequential of
  N Linears with a GELU between each pair: Linear(vision -> llm), then (GELU, Linear(llm -> llm)) N-1 times;
  its keys are `model.mm_projector.{0, 2, 4, ...}.weight`. LLaVA-1.5 uses `mlp2x_gelu`.
- huggingface/transformers src/transformers/models/llava/modeling_llava.py (LlavaMultiModalProjector):
  `linear_1`, `act`, `linear_2`, activation `gelu` (the exact erf form, nn.GELU()), biases on by default;
  convert_llava_weights_to_hf.py renames `model.mm_projector.0` -> `multi_modal_projector.linear_1` and
  `model.mm_projector.2` -> `multi_modal_projector.linear_2`.
- Vision-CAIR/MiniGPT-4 minigpt4/models/minigpt4.py: `llama_proj = nn.Linear(Qformer hidden size (768),
  llama hidden size)` applied to the 32 Q-Former outputs; LinearProjector(768, llm) is that layer.

Checkpoint keys, original -> these modules (one tensor to one tensor, no reshaping):
  LLaVA v1 `model.mm_projector.{weight,bias}`            -> LinearProjector `linear_1.{weight,bias}`
  MiniGPT-4 `llama_proj.{weight,bias}`                   -> LinearProjector `linear_1.{weight,bias}`
  LLaVA `model.mm_projector.{2(k-1)}.{weight,bias}`      -> MLPProjector `linear_{k}.{weight,bias}`
  llava-hf `multi_modal_projector.linear_{k}.*`          -> MLPProjector `linear_{k}.*` (same names)
The single layer is called `linear_1` rather than left bare so that every Loom projector's first layer
has one name, whatever the preset.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearProjector(nn.Module):
    """LLaVA v1's `linear` projector and MiniGPT-4's `llama_proj`: one affine map into the LLM's space."""

    def __init__(self, vision_size: int, llm_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_size, llm_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(features)  # (N, P, vision_size) -> (N, P, llm_size)


class MLPProjector(nn.Module):
    """LLaVA-1.5's `mlp2x_gelu` (and `mlp{depth}x_gelu`): Linear, then GELU + Linear `depth - 1` times."""

    def __init__(self, vision_size: int, llm_size: int, depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLPProjector depth {depth}: needs at least one Linear (LLaVA's 'mlp{{depth}}x_gelu')")
        self.depth = depth
        self.linear_1 = nn.Linear(vision_size, llm_size)
        # GELU holds no weights, so one module serves every gap; transformers names it `act`.
        self.act = nn.GELU()
        # Numbered attributes, not a ModuleList: keeps `linear_2` exactly where llava-hf checkpoints put it.
        for k in range(2, depth + 1):
            setattr(self, f"linear_{k}", nn.Linear(llm_size, llm_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(features)  # (N, P, llm_size)
        for k in range(2, self.depth + 1):
            hidden = getattr(self, f"linear_{k}")(self.act(hidden))
        return hidden
