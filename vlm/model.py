"""A vision-language model as three slots: vision tower, connector, language model (any bundled preset).

Read top to bottom: the attention kernels that keep packed samples apart, the connectors a preset can
name, and the model (image features scattered into token embeddings at the image placeholders,
per-token loss). How packed rows become document ids and masks is `vlm.packed_masks`; which class runs
a preset, and building one, is `vlm.builders`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from .connectors.projector import LinearProjector, MLPProjector
from .connectors.qformer import QFormer, QFormerConfig
from .connectors.resampler import QwenResampler
from .connectors.token_concat import ConcatProjector
from .flex import ATTENTION_NAME as BUCKETED_FLEX, bucketed_flex_attention
from .language import build_language_model, decoder_stack
from .packed_masks import (ATTENTION_MODES, build_attention_mask, document_ids_from_segments, positions_from_document_ids,
                           segment_bounds, shifted_targets, varlen_kwargs)
from .preset import Preset
from .saving import save_pretrained as write_pretrained
from .vision import build_vision_tower, image_features


def segment_sdpa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           segment_bounds=None, **kwargs):
    """Causal attention computed inside each packed sample only: flash-attn varlen's idea, on any device.

    A dense block-diagonal mask spends O(L²) work on a 2048-token row although ~130-token
    samples need only Σ len²; running sdpa on each sample's own block is exact and skips the
    masked-out work. query (B, Hq, L, D); key, value (B, Hkv, L, D).
    """
    if segment_bounds is None:
        raise ValueError("segment_sdpa needs segment_bounds (the model passes them; use sdpa for generation)")
    if key.shape[1] != query.shape[1]:  # grouped-query attention: share each key head across its queries
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    rows = []
    for b, bounds in enumerate(segment_bounds):
        parts = [F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                                is_causal=True, scale=scaling,
                                                dropout_p=dropout if module.training else 0.0)
                 for s, e in bounds]
        rows.append(torch.cat(parts, dim=2))  # (1, H, L, D)
    return torch.cat(rows).transpose(1, 2).contiguous(), None  # (B, L, H, D), as transformers expects


AttentionInterface.register("segment_sdpa", segment_sdpa_attention)
# "flex_attention" runs Loom's bucketed kernel (vlm.flex), not transformers' own, whose automatic dynamic
# shapes crash torch 2.13's CPU compiler at the second row length
AttentionInterface.register(BUCKETED_FLEX, bucketed_flex_attention)


# ---------------------------------------------------------------------------------------------
# Connectors
# ---------------------------------------------------------------------------------------------

def build_connector(preset: Preset, config: dict[str, Any], vision_size: int, llm_size: int) -> tuple[nn.Module, nn.Module | None]:
    """(connector, projection or None) of a preset: the module carrying the paper's idea, and the
    layer after a Q-Former that maps its queries to the LLM width."""
    kind = preset.connector
    if kind == "linear":
        return LinearProjector(vision_size, llm_size), None
    if kind == "mlp2x_gelu":
        return MLPProjector(vision_size, llm_size, depth=2), None
    if preset.has_qformer:
        # BLIP-2 and InstructBLIP keep the text path and the stage-1 heads (ITC, ITM, ITG: InstructBLIP runs
        # BLIP-2's stages first); MiniGPT-4's frozen Q-Former only turns images into queries.
        # (a checkpoint's config may say otherwise: BLIP-2's transformers checkpoints carry no text path)
        text_path = preset.qformer_text is not None
        qformer = QFormer(QFormerConfig(**{"text_input": text_path, "stage1_heads": text_path, **config,
                                           "encoder_hidden_size": vision_size}))
        return qformer, LinearProjector(config["hidden_size"], llm_size)
    if kind == "resampler":
        if config["embed_dim"] != llm_size:
            raise ValueError(f"preset {preset.name!r}: the resampler's embed_dim {config['embed_dim']} must equal the "
                             f"LLM width {llm_size} (Qwen-VL's adapter output is the LLM's input)")
        return QwenResampler(config["embed_dim"], vision_size, num_queries=config["num_queries"],
                             num_heads=config.get("num_heads")), None
    if kind == "token_concat":
        return ConcatProjector(vision_size, llm_size, group=config.get("group", 4)), None
    raise ValueError(f"preset {preset.name!r}: connector {kind!r} cannot be built by this version of Loom")


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

@dataclass
class VLMOutput:
    """What a forward pass returns: loss (per-token mean), logits, supervised token count, cache."""

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    num_tokens: int
    cache: Any = None


class VisionLanguageModel(nn.Module):
    """A vision tower, a connector (and projection) and a language model, trained on packed multimodal rows."""

    def __init__(
        self,
        preset: Preset,
        vision_config: dict[str, Any],
        llm_config: dict[str, Any],
        image_token_id: int,
        pad_token_id: int,
        attn_implementation: str = "sdpa",
        connector_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.preset = preset
        self.vision_config = dict(vision_config)
        self.llm_config = dict(llm_config)
        self.connector_config = dict(preset.connector_config if connector_config is None else connector_config)
        self.image_token_id = int(image_token_id)
        self.pad_token_id = int(pad_token_id)
        self.visual_tokens = preset.visual_tokens
        self.vision_tower = build_vision_tower(preset.vision_kind, self.vision_config)
        self.connector, self.projection = self.build_connector()
        self.language_model = build_language_model(preset.llm_kind, self.llm_config)
        self.attn_implementation = "sdpa"
        self.set_attention(attn_implementation)

    def build_connector(self) -> tuple[nn.Module, nn.Module | None]:
        """(connector, projection or None) for this model's preset (a subclass whose tower holds its
        connector, as Qwen2-VL's does, returns that)."""
        llm_size = self.llm_config.get("hidden_size", self.llm_config.get("d_model"))  # T5 calls it d_model
        return build_connector(self.preset, self.connector_config, self.vision_config["hidden_size"], llm_size)

    # -- configuration -----------------------------------------------------------------------

    def set_attention(self, mode: str) -> None:
        """Selects the LLM's attention kernel; the mask form follows (see build_attention_mask)."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {mode!r} is not one of {ATTENTION_MODES}")
        self.language_model.set_attn_implementation(BUCKETED_FLEX if mode == "flex_attention" else mode)
        self.attn_implementation = mode

    @property
    def groups(self) -> dict[str, nn.Module]:
        """The slots a training stage can unfreeze, by group name."""
        groups = {"vision": self.vision_tower, "connector": self.connector}
        if self.projection is not None:
            groups["projection"] = self.projection
        groups["llm"] = self.language_model
        return groups

    @property
    def trainable_groups(self) -> list[str]:
        """Names of the groups whose parameters currently require gradients."""
        return [name for name, module in self.groups.items() if any(p.requires_grad for p in module.parameters())]

    def set_trainable(self, groups: Iterable[str]) -> None:
        """Unfreezes exactly `groups`; every other parameter gets requires_grad=False."""
        groups = set(groups)
        unknown = groups - set(self.groups)
        if unknown:
            raise ValueError(f"preset {self.preset.name!r} has no parameter group(s) {sorted(unknown)}; "
                             f"its groups are {list(self.groups)}")
        for name, module in self.groups.items():
            module.requires_grad_(name in groups)

    def parameter_groups(self, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups, one per trainable slot, frozen parameters left out."""
        return [
            {"name": name, "params": [p for p in module.parameters() if p.requires_grad], "weight_decay": weight_decay}
            for name, module in self.groups.items()
            if any(p.requires_grad for p in module.parameters())
        ]

    def enable_activation_checkpointing(self) -> None:
        """Recomputes layer activations in the backward pass: less memory, ~30% more compute."""
        self.language_model.activation_checkpointing_enable()
        self.vision_tower.activation_checkpointing_enable()

    def config_dict(self) -> dict[str, Any]:
        """Everything `vlm.builders.from_config_dict` needs to rebuild this model (weights aside)."""
        return {
            "preset_name": self.preset.name,
            "preset": self.preset.to_dict(),
            "vision_config": self.vision_config,
            "llm_config": self.llm_config,
            "connector_config": self.connector_config,
            "image_token_id": self.image_token_id,
            "pad_token_id": self.pad_token_id,
            "attn_implementation": self.attn_implementation,
        }

    def save_pretrained(self, path, format: str = "loom"):
        """Write this model to folder `path`: Loom's format, or format="hf" for the official transformers
        checkpoint of its architecture (llava-1.5, BLIP-2, InstructBLIP, Qwen2-VL)."""
        return write_pretrained(self, path, format=format)

    # -- forward -----------------------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor | None = None,
                       qformer_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, visual_tokens, D) LLM-space features of N images (InstructBLIP's Q-Former also reads each
        image's instruction, in its own vocabulary: qformer_input_ids (N, T))."""
        preset = self.preset
        vision_learns = any(p.requires_grad for p in self.vision_tower.parameters())
        # A frozen tower needs no autograd graph: this is most of the memory of a connector-only stage.
        with torch.set_grad_enabled(torch.is_grad_enabled() and vision_learns):
            pixel_values = pixel_values.to(next(self.vision_tower.parameters()).dtype)
            features = image_features(self.vision_tower, pixel_values, preset.vision_feature_layer,
                                      preset.vision_post_norm, preset.keep_cls)  # (N, P, Dv)
        if not preset.has_qformer:
            return self.connector(features)  # (N, visual_tokens, D)
        # InstructBLIP's Q-Former reads each image's instruction beside its queries; without one (BLIP-2's
        # generative stage, which InstructBLIP runs first) the queries are read alone. BLIP-2's captions are
        # for its stage 1, never read here.
        if preset.qformer_text != "instruction":
            qformer_input_ids = qformer_attention_mask = None
        queries = self.connector.visual_tokens(features, instruction_ids=qformer_input_ids,
                                               instruction_mask=qformer_attention_mask)  # (N, 32, 768)
        return self.projection(queries)  # (N, 32, D)

    def representation_losses(self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor,
                              qformer_attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """BLIP-2's stage 1 on N images and their captions (in the Q-Former's vocabulary): ITC, ITM with hard
        negatives and ITG, from the Q-Former on the (frozen) vision tower's features; "loss" is their sum."""
        if self.preset.qformer_text is None:
            raise ValueError(f"preset {self.preset.name!r}: the itc_itm_itg objective is BLIP-2's Q-Former stage 1; "
                             f"this preset's connector is {self.preset.connector!r}")
        vision_learns = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and vision_learns):
            features = image_features(self.vision_tower, pixel_values.to(next(self.vision_tower.parameters()).dtype),
                                      self.preset.vision_feature_layer, self.preset.vision_post_norm, self.preset.keep_cls)
        return self.connector.stage1_losses(features, qformer_input_ids, qformer_attention_mask)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, **image_inputs) -> torch.Tensor:
        """(B, L, D) token embeddings with image features written over the image-token positions."""
        inputs_embeds = self.language_model.get_input_embeddings()(input_ids)  # (B, L, D)
        is_image = input_ids == self.image_token_id  # (B, L)
        found = int(is_image.sum())
        images = 0 if pixel_values is None else pixel_values.shape[0]
        if found != images * self.visual_tokens:
            raise ValueError(
                f"input_ids hold {found} image-token positions (id {self.image_token_id}) but {images} images give "
                f"{images} x {self.visual_tokens} = {images * self.visual_tokens} visual tokens; every image must be "
                f"expanded to exactly {self.visual_tokens} consecutive image tokens (preset {self.preset.name!r}) and "
                f"pixel_values must hold one image per expansion, in order of appearance"
            )
        if images == 0:
            return inputs_embeds
        features = self.image_features(pixel_values, **image_inputs).to(inputs_embeds.dtype)  # (N, T, D)
        # masked_scatter fills positions in row-major order: row 0 left to right, then row 1,
        # which is exactly the order the images were stacked in.
        return inputs_embeds.masked_scatter(is_image.unsqueeze(-1).expand_as(inputs_embeds), features)

    def prepare_images(self, pixel_values: torch.Tensor | None, image_inputs: dict) -> tuple[torch.Tensor | None, dict]:
        """Pixels and the other image inputs as `embed` and `position_ids` take them (as given here;
        Qwen2-VL cuts images into patch sequences)."""
        return pixel_values, image_inputs

    def position_ids(self, input_ids: torch.Tensor, document_ids: torch.Tensor, position_ids: torch.Tensor | None,
                     cache: Any = None, **image_inputs) -> torch.Tensor:
        """(B, L) positions restarting in every packed sample, unless given."""
        return positions_from_document_ids(document_ids) if position_ids is None else position_ids

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        segment_lengths: Sequence[Sequence[int]] | torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        attention_mask: Any = None,
        cache: Any = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        logits_to_keep: int = 0,
        **image_inputs,
    ) -> VLMOutput:
        """Logits and/or loss of packed rows.

        input_ids (B, L); pixel_values (N, 3, H, W) for the N images in order of appearance;
        segment_lengths or document_ids (B, L) say where samples start, so attention stays
        inside a sample and positions restart. Loss is the mean over all supervised tokens
        in the batch, or sum / num_items_in_batch when the caller accumulates several
        micro-batches into one step, so packing changes speed, never the objective.
        `attention_mask` and `cache` are for generation, which manages its own mask.
        `image_inputs` are what a preset reads besides pixels: InstructBLIP's qformer_input_ids and
        qformer_attention_mask (one row per image), Qwen2-VL's image_grid_thw.
        """
        length = input_ids.shape[1]
        if document_ids is None:
            if segment_lengths is not None:
                document_ids = document_ids_from_segments(segment_lengths, length, input_ids.device)
            else:
                document_ids = torch.zeros_like(input_ids)
        pixel_values, image_inputs = self.prepare_images(pixel_values, image_inputs)
        inputs_embeds = self.embed(input_ids, pixel_values, **image_inputs)  # (B, L, D)
        position_ids = self.position_ids(input_ids, document_ids, position_ids, cache, **image_inputs)
        extra = {}
        if self.attn_implementation in ("segment_sdpa", "flash_attention_2") and cache is not None:
            raise ValueError(f"{self.attn_implementation} computes whole samples; generate with sdpa (set_attention('sdpa'))")
        if self.attn_implementation == "segment_sdpa":
            extra["segment_bounds"] = segment_bounds(document_ids)
        elif self.attn_implementation == "flash_attention_2":
            extra.update(varlen_kwargs(document_ids))  # no mask: flash-attn's varlen kernel keeps samples apart
        elif attention_mask is None:
            attention_mask = build_attention_mask(document_ids, document_ids, self.attn_implementation)

        outputs = decoder_stack(self.language_model)(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            **extra,
        )
        hidden = outputs.last_hidden_state  # (B, L, D)
        lm_head = self.language_model.get_output_embeddings()

        loss, num_tokens = None, 0
        if labels is not None:
            targets = shifted_targets(labels, document_ids)  # (B, L-1)
            supervised = targets != -100  # (B, L-1)
            num_tokens = int(supervised.sum())
            # Only supervised positions go through the LM head: prompts and images are most of a row.
            logits_supervised = lm_head(hidden[:, :-1][supervised]).float()  # (T, V)
            loss_sum = F.cross_entropy(logits_supervised, targets[supervised], reduction="sum")
            denominator = num_items_in_batch if num_items_in_batch is not None else max(num_tokens, 1)
            loss = loss_sum / denominator

        logits = None
        if return_logits:
            kept = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
            logits = lm_head(kept).float()  # (B, L or logits_to_keep, V)
        return VLMOutput(loss=loss, logits=logits, num_tokens=num_tokens, cache=outputs.cache)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts per slot and in total."""
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.groups.items()}
    counts["total"] = sum(counts.values())
    return counts
