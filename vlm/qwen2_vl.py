"""Qwen2-VL in Loom's three slots: a native-resolution ViT with 2D-RoPE, its 2x2 patch merger, Qwen2 with M-RoPE.

Images keep their own size. Each is cut into patch x patch squares (a still image is repeated
temporal_patch_size times, as Qwen2-VL's image processor does, so that images and video frames share
one Conv3d), the ViT attends within each image only, and the patch merger turns every 2x2 block of
patches into one LLM token: an image of h x w patches takes h*w/4 placeholder positions, so the number
of placeholders differs from image to image.

Positions are M-RoPE: three ids (temporal, height, width) per token. Text tokens carry the same id on
all three axes, increasing by one; an image's tokens carry their (t, h, w) grid coordinates offset by
the id the image starts at; text after an image continues from the image's largest id + 1. In a
packed row every sample starts again at 0, and attention is causal and block-diagonal per sample as
in every preset (`vlm.packed_masks`).

Facts from arXiv 2409.12191 and transformers' models/qwen2_vl (Qwen2VLImageProcessor.patchify,
Qwen2VLModel.get_rope_index, Qwen2VisionTransformerPretrainedModel); weights to and from transformers'
Qwen2VLForConditionalGeneration are `vlm.convert`'s (from_hf_qwen2_vl_state_dict, to_hf_qwen2_vl_state_dict).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Sequence

import torch
from torch import nn

from .model import VisionLanguageModel
from .packed_masks import segment_bounds

# ---------------------------------------------------------------------------------------------
# Images → patch sequences
# ---------------------------------------------------------------------------------------------


def patchify(
    images: torch.Tensor | Sequence[torch.Tensor],
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images as the patch sequence Qwen2-VL's ViT reads: (pixel_values, image_grid_thw).

    images: an (N, 3, H, W) tensor, or a sequence of (3, H, W) tensors of different sizes; H and W
    must be multiples of patch_size * merge_size. Returns pixel_values (Σ h*w, C*T*p*p), every patch
    flattened channel, time, row, column (the Conv3d's (C, T, p, p) kernel order), patches listed
    2x2 merge block by merge block so that the merger's four inputs are adjacent; and
    image_grid_thw (N, 3) = (1, H/p, W/p) per image, as Qwen2VLImageProcessor produces them.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        groups = [images]
    elif isinstance(images, torch.Tensor):
        raise ValueError(f"images of shape {tuple(images.shape)}: expected (N, 3, H, W) or a list of (3, H, W) tensors")
    else:
        groups = [image.unsqueeze(0) for image in images]
    factor = patch_size * merge_size
    pixel_values, grids = [], []
    for stack in groups:
        n, channels, height, width = stack.shape
        if height % factor or width % factor:
            raise ValueError(f"image of {height}x{width} pixels: height and width must be multiples of "
                             f"patch_size * merge_size = {factor}; resize it (Qwen2-VL's smart_resize rounds to {factor})")
        grid_h, grid_w = height // patch_size, width // patch_size
        patches = stack.reshape(n, channels, grid_h // merge_size, merge_size, patch_size,
                                grid_w // merge_size, merge_size, patch_size)
        # (N, h/m, w/m, m, m, C, p, p): merge blocks in raster order, the 2x2 patches of a block together
        patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)
        # A still image is its own video of temporal_patch_size identical frames.
        patches = patches.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal_patch_size, -1, -1)
        pixel_values.append(patches.reshape(n * grid_h * grid_w, channels * temporal_patch_size * patch_size ** 2))
        grids += [[1, grid_h, grid_w]] * n
    return torch.cat(pixel_values), torch.tensor(grids, dtype=torch.long)  # (Σ h*w, C*T*p*p), (N, 3)


def visual_token_counts(image_grid_thw: torch.Tensor, merge_size: int = 2) -> list[int]:
    """LLM positions each image takes: t * h * w / merge², one per merged block of patches."""
    return (image_grid_thw.prod(-1) // merge_size ** 2).tolist()


# ---------------------------------------------------------------------------------------------
# M-RoPE positions of packed rows
# ---------------------------------------------------------------------------------------------


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    image_token_id: int,
    merge_size: int = 2,
    document_ids: torch.Tensor | None = None,
    text_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, B, L) M-RoPE ids (temporal, height, width) of packed rows, and (B,) each row's rope delta.

    Images are taken from image_grid_thw in order of appearance (row 0 left to right, then row 1);
    an image's t*h*w/merge² placeholders must be consecutive and inside one sample. Each sample
    (a run of equal document_ids) starts at 0, or at its first entry of `text_positions` (B, L) when
    given, which is how a left-padded prompt keeps the ids it has alone. The rope delta is what a
    row's next token adds to its plain 1-D position to get its M-RoPE id: decoding with a KV cache
    needs it, as the images before are no longer in the input.
    """
    batch, length = input_ids.shape
    if document_ids is None:
        document_ids = torch.zeros_like(input_ids)
    grids = [] if image_grid_thw is None else [[int(x) for x in g] for g in image_grid_thw.tolist()]
    firsts = None if text_positions is None else text_positions.tolist()
    image_at = [row.nonzero().flatten().tolist() for row in (input_ids == image_token_id).cpu()]
    positions = torch.zeros(3, batch, length, dtype=torch.long)
    rope_deltas = torch.zeros(batch, dtype=torch.long)
    used = 0  # images consumed so far
    for b, bounds in enumerate(segment_bounds(document_ids)):
        k = 0  # the next image token of row b, as an index into image_at[b]
        for start, end in bounds:
            first = 0 if firsts is None else int(firsts[b][start])
            position, i = first, start
            while True:
                j = image_at[b][k] if k < len(image_at[b]) and image_at[b][k] < end else end
                positions[:, b, i:j] = torch.arange(position, position + j - i)  # text: one id on all three axes
                position += j - i
                if j == end:
                    break
                if used == len(grids):
                    raise ValueError(f"row {b}, position {j}: an image placeholder (id {image_token_id}) but "
                                     f"image_grid_thw lists only {len(grids)} images; give one grid per image, in order")
                t, h, w = grids[used]
                used += 1
                h, w = h // merge_size, w // merge_size
                n = t * h * w
                if j + n > end or k + n > len(image_at[b]) or image_at[b][k + n - 1] != j + n - 1:
                    raise ValueError(f"row {b}, position {j}: image {used - 1} (grid {grids[used - 1]}) needs {n} "
                                     f"consecutive placeholders inside one sample; expand each image to "
                                     f"t*h*w/{merge_size ** 2} image tokens")
                grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
                positions[:, b, j:j + n] = grid.reshape(3, n) + position  # (3, n): the image's own coordinates
                # The next text continues after the image's largest id, so a big image spends max(h, w)
                # ids, not h*w: this is what keeps M-RoPE ids short for long visual sequences.
                position += max(h, w)
                k, i = k + n, j + n
            rope_deltas[b] = position - (first + end - start)
    if used != len(grids):
        raise ValueError(f"image_grid_thw lists {len(grids)} images but input_ids hold placeholders for {used}")
    return positions.to(input_ids.device), rope_deltas.to(input_ids.device)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class Qwen2VLM(VisionLanguageModel):
    """Qwen2-VL: native-resolution images through a 2D-RoPE ViT and a 2x2 patch merger into Qwen2 with M-RoPE.

    Slots: "vision" is the ViT without its merger, "connector" is the merger (LayerNorm, then an MLP
    over each 2x2 block of patch features), "llm" is Qwen2 with its LM head.
    """

    def __init__(self, *args, **kwargs):  # VisionLanguageModel's arguments
        super().__init__(*args, **kwargs)
        # The merger now belongs to the connector slot alone: the groups stay disjoint and the state
        # dict holds each tensor once (safetensors refuses to save shared tensors).
        self.vision_tower.merger = nn.Identity()
        self.merge_size = int(self.vision_config.get("spatial_merge_size", 2))
        self.patch_size = int(self.vision_config.get("patch_size", 14))
        self.temporal_patch_size = int(self.vision_config.get("temporal_patch_size", 2))
        text = self.language_model.config
        sections = text.rope_parameters.get("mrope_section")
        head_dim = text.hidden_size // text.num_attention_heads
        if sections is None or sum(sections) != head_dim // 2:
            raise ValueError(f"preset {self.preset.name!r}: rope_scaling mrope_section {sections} must sum to head_dim / 2 = "
                             f"{head_dim // 2} (the rotary frequencies split among temporal, height and width)")
        self.rope_deltas: torch.Tensor | None = None  # (B,), set by a forward that fills a KV cache

    def build_connector(self) -> tuple[nn.Module, nn.Module | None]:
        """The tower's own 2x2 patch merger is the connector; there is no separate projection."""
        return self.vision_tower.merger, None

    # -- forward -----------------------------------------------------------------------------

    def patches(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values as patches, image_grid_thw): images (N, 3, H, W) are patchified here; patches pass as they are."""
        if pixel_values.ndim == 4 and image_grid_thw is None:
            return patchify(pixel_values, self.patch_size, self.merge_size, self.temporal_patch_size)
        if pixel_values.ndim != 2 or image_grid_thw is None:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: give images (N, 3, H, W), or patches "
                             "(Σ t*h*w, C*T*p*p) together with their image_grid_thw (N, 3) (see vlm.qwen2_vl.patchify)")
        return pixel_values, image_grid_thw

    def image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """(Σ t*h*w/4, D) LLM-space features of the images in a patch sequence, image after image."""
        vision_learns = any(p.requires_grad for p in self.vision_tower.parameters())
        # A frozen tower needs no autograd graph: this is most of the memory of a connector-only stage.
        with torch.set_grad_enabled(torch.is_grad_enabled() and vision_learns):
            pixel_values = pixel_values.to(next(self.vision_tower.parameters()).dtype)
            grid = image_grid_thw.to(pixel_values.device)
            patch_features = self.vision_tower(pixel_values, grid_thw=grid).last_hidden_state  # (Σ t*h*w, Dv)
        # The ViT lists each 2x2 block's patches together, so the merger reads four consecutive rows.
        return self.connector(patch_features)  # (Σ t*h*w/4, D)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) token embeddings with image features written over the image-token positions."""
        inputs_embeds = self.language_model.get_input_embeddings()(input_ids)  # (B, L, D)
        is_image = input_ids == self.image_token_id  # (B, L)
        found = int(is_image.sum())
        counts = [] if image_grid_thw is None else visual_token_counts(image_grid_thw, self.merge_size)
        if found != sum(counts):
            raise ValueError(
                f"input_ids hold {found} image-token positions (id {self.image_token_id}) but image_grid_thw gives "
                f"{len(counts)} images of {counts} visual tokens = {sum(counts)}; expand every image to t*h*w/"
                f"{self.merge_size ** 2} consecutive image tokens (preset {self.preset.name!r}), images in order of appearance"
            )
        if not counts:
            return inputs_embeds
        features = self.image_features(pixel_values, image_grid_thw).to(inputs_embeds.dtype)  # (Σ tokens, D)
        # masked_scatter fills positions in row-major order, the order the images were listed in.
        return inputs_embeds.masked_scatter(is_image.unsqueeze(-1).expand_as(inputs_embeds), features)

    def position_ids(self, input_ids: torch.Tensor, document_ids: torch.Tensor, position_ids: torch.Tensor | None,
                     cache: Any = None, image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """(3, B, L) M-RoPE ids; 1-D position_ids (B, L) only say where each sample's ids start."""
        if position_ids is not None and position_ids.ndim == 3:
            return position_ids  # already M-RoPE
        past = 0 if cache is None else cache.get_seq_length()
        if past == 0:
            positions, rope_deltas = mrope_position_ids(input_ids, image_grid_thw, self.image_token_id, self.merge_size,
                                                        document_ids, position_ids)
            if cache is not None:
                self.rope_deltas = rope_deltas
            return positions
        # Decoding with a cache: the new tokens are text, shifted by what the images before saved.
        if self.rope_deltas is None or self.rope_deltas.shape[0] != input_ids.shape[0]:
            raise ValueError("a cached decoding step needs the rope deltas of its prefill: run the prompt through "
                             "this model with the same (empty) cache first")
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        return (position_ids + self.rope_deltas[:, None]).unsqueeze(0).expand(3, -1, -1)

    def prepare_images(self, pixel_values, image_inputs):
        """Images (N, 3, H, W) of one size become patch sequences and their grids; patches given with
        image_grid_thw pass as they are."""
        if pixel_values is None:
            return None, image_inputs
        pixel_values, grid = self.patches(pixel_values, image_inputs.get("image_grid_thw"))
        return pixel_values, {**image_inputs, "image_grid_thw": grid}


    def transformers_config(self):
        """transformers' Qwen2VLConfig of this model: what `save_pretrained(format="hf")` writes and what
        `as_transformers` builds. transformers reads `tie_word_embeddings` from the outer config only."""
        from transformers import Qwen2VLConfig

        text = {k: v for k, v in self.llm_config.items() if k != "tie_word_embeddings"}
        tied = self.language_model.lm_head.weight is self.language_model.get_input_embeddings().weight
        return Qwen2VLConfig(vision_config=dict(self.vision_config), text_config=text, image_token_id=self.image_token_id,
                             tie_word_embeddings=tied)

    @contextmanager
    def as_transformers(self):
        """transformers' Qwen2VLForConditionalGeneration made of this model's own modules, nothing copied:
        its `generate` (beam search with M-RoPE's rope deltas) then runs on Loom's weights."""
        from transformers import Qwen2VLForConditionalGeneration

        with torch.device("meta"):  # every parameter is replaced by Loom's below
            view = Qwen2VLForConditionalGeneration(self.transformers_config())
        self.vision_tower.merger = self.connector
        view.model.visual = self.vision_tower
        view.model.language_model = self.language_model.model
        view.lm_head = self.language_model.lm_head
        try:
            yield view.eval()
        finally:
            self.vision_tower.merger = nn.Identity()

    def transformers_generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              pixel_values: torch.Tensor | None, image_grid_thw: torch.Tensor | None = None,
                              **settings) -> torch.Tensor:
        """New tokens (B, T) from transformers' generate on this model (see as_transformers)."""
        if pixel_values is not None:
            pixel_values, image_grid_thw = self.patches(pixel_values, image_grid_thw)
        with self.as_transformers() as view:
            out = view.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                image_grid_thw=image_grid_thw, mm_token_type_ids=(input_ids == self.image_token_id).int(),
                                **settings)
        return out[:, input_ids.shape[1]:]
