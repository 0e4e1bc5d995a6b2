"""Vision towers: the bundled architectures' image encoders, built from transformers' own classes.

- clip: `CLIPVisionModel` (LLaVA's ViT-L/14 at 224 and 336 px)
- qwen_vl: Qwen-VL's own ViT (`vlm.qwen_vl_vision`): no CLS token, 256 positions resized to the patch grid
- eva: `Blip2VisionModel`, which is EVA ViT-g/14 as BLIP-2 ships it (InstructBLIP, MiniGPT-4, MiniGPT-v2)
- qwen2_vl: `Qwen2VisionTransformerPretrainedModel`, Qwen2-VL's native-resolution ViT with 2D-RoPE; its
  patch merger is Loom's connector slot (see `vlm.qwen2_vl`)

`image_features` picks the hidden state a preset names (the penultimate layer by default), applies the
tower's final LayerNorm where the paper does (BLIP-2's ln_vision) and keeps or drops the CLS token.
"""

from __future__ import annotations

import torch
from torch import nn


def build_vision_tower(kind: str, config: dict) -> nn.Module:
    """A randomly initialised vision tower of `kind` from transformers config kwargs."""
    if kind == "clip":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        return CLIPVisionModel(CLIPVisionConfig(**config))
    if kind == "eva":
        from transformers import Blip2VisionConfig, Blip2VisionModel

        return Blip2VisionModel(Blip2VisionConfig(**config))
    if kind == "qwen_vl":
        from .qwen_vl_vision import QwenVLVisionTransformer

        return QwenVLVisionTransformer(config)
    if kind == "qwen2_vl":
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        return Qwen2VisionTransformerPretrainedModel(Qwen2VLVisionConfig(**config))
    raise ValueError(f"vision tower kind {kind!r}; expected clip, eva, qwen_vl or qwen2_vl")


def _post_layernorm(tower: nn.Module) -> nn.Module:
    inner = getattr(tower, "vision_model", tower)  # CLIPVisionModel wraps a CLIPVisionTransformer
    return inner.post_layernorm


def image_features(tower: nn.Module, pixel_values: torch.Tensor, layer: int, post_norm: bool, keep_cls: bool) -> torch.Tensor:
    """(N, P[+1], Dv) features of N images from hidden state `layer` of a clip, eva or qwen_vl tower."""
    from .qwen_vl_vision import QwenVLVisionTransformer

    if isinstance(tower, QwenVLVisionTransformer):  # patches alone: Qwen-VL's ViT has no CLS token to keep or drop
        if keep_cls or post_norm:
            raise ValueError("Qwen-VL's tower has no CLS token and no final LayerNorm of its own (ln_post follows its "
                             "resampler); its preset needs keep_cls=False and vision_post_norm=False")
        return tower(pixel_values, layer)  # (N, P, Dv)
    # a stage at another resolution than the tower's (Qwen-VL's 224-px first stage of a 448-px model):
    # the position embeddings are interpolated to the image's patch grid
    other_size = pixel_values.shape[-1] != tower.config.image_size or pixel_values.shape[-2] != tower.config.image_size
    hidden_states = tower(pixel_values, output_hidden_states=True,
                          interpolate_pos_encoding=other_size).hidden_states  # embeddings, then each layer
    features = hidden_states[layer]  # (N, 1 + P, Dv)
    if post_norm:
        features = _post_layernorm(tower)(features)
    return features if keep_cls else features[:, 1:]  # (N, P, Dv) without CLS
