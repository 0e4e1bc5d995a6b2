"""The encoder-decoder VLM of the FlanT5 presets (blip2-flant5, instructblip-flant5): images and prompt in, answer out.

BLIP-2 and InstructBLIP with FlanT5 feed the 32 projected Q-Former outputs to the T5 *encoder*, followed
by the prompt; the answer is the *decoder*'s target, decoded from a start token (pad, id 0) with the
labels shifted right. Loom keeps the decoder-only models' convention for where an image goes: input_ids
hold `image_token_id` x visual_tokens at the image's place, and the projected queries are written over
those positions of the encoder's input embeddings.

Packed rows hold several (encoder, decoder) samples: row b's encoder input is the samples' encoder
inputs one after another (segment_lengths), its decoder targets their answers one after another
(decoder_segment_lengths), sample k being segment k of both. Three explicit masks keep samples apart:
encoder self-attention is bidirectional within a segment, decoder self-attention causal within a
segment, cross-attention from decoder segment k to encoder segment k only. That is exact, not an
approximation, because T5 has no absolute positions: its only position signal is a learned bias of the
*difference* key - query (bucketed), computed from 0..L-1 over the whole row (`T5Attention.compute_bias`,
`past_seen_tokens` 0 without a cache), so two tokens of one segment get the same bias packed as alone,
and cross-attention has no position bias at all.

Facts and where they were read:
- salesforce/LAVIS lavis/models/blip2_models/blip2_t5.py and blip2_t5_instruct.py: `inputs_t5 =
  t5_proj(query_output[:, :32])` concatenated *before* the prompt embeddings in the encoder, attention
  mask [ones(32), prompt mask]; targets = answer ids with pad set to -100, passed as `labels` to
  T5ForConditionalGeneration (plain cross-entropy, decoder inputs = labels shifted right); the T5 config
  is loaded with `dense_act_fn = "gelu"` (exact GELU in the gated feed-forward, where transformers'
  "gated-gelu" means the tanh approximation `gelu_new`).
- huggingface/transformers models/blip_2/convert_blip_2_original_to_pytorch.py and
  instructblip/convert_instructblip_original_to_pytorch.py: `T5Config.from_pretrained("google/flan-t5-xl",
  dense_act_fn="gelu", bos_token_id=1)`; t5_proj -> `language_projection`.
- huggingface/transformers 5.24 models/blip_2/modeling_blip_2.py, instructblip/modeling_instructblip.py:
  image features = `vision_model(...).last_hidden_state` (after post_layernorm, CLS kept), query outputs
  projected and `masked_scatter`-ed over `input_ids == image_token_id` of the encoder input; the T5
  language model gets `inputs_embeds`, `attention_mask`, `labels`.
- huggingface/transformers 5.24 models/t5/modeling_t5.py and masking_utils.py: a 4D mask given to
  `T5Stack` is used as is (`_preprocess_mask_arguments` returns early) for encoder self-attention,
  decoder self-attention and cross-attention (`encoder_attention_mask`); sdpa merges a bool mask with the
  position bias (`create_position_bias_mask`), eager *adds* the mask (so it must be float).
  `T5ForConditionalGeneration.forward` passes the encoder's `attention_mask` on as the
  cross-attention mask, which is wrong for packed rows (a (B, 1, Le, Le) mask is not (B, 1, Ld, Le)), so
  this module runs `encoder` and `decoder` itself and applies `lm_head` (scaled by d_model^-0.5 only when
  `scale_decoder_outputs`, i.e. original T5, not FlanT5).
- transformers 5.24 configuration_t5.py forces `tie_word_embeddings = True` for every T5 config (the value
  given only decides `scale_decoder_outputs`); `from_pretrained` unties lm_head again when a checkpoint
  holds a different one, as FlanT5's do. A model built here from a config that says
  `tie_word_embeddings=False` (FlanT5) therefore gets its own lm_head, as the checkpoints have.

Weights, transformers' Blip2ForConditionalGeneration / InstructBlipForConditionalGeneration <-> Loom:
  vision_model.*          vision_tower.*
  query_tokens, qformer.* connector.* (renamed by vlm.connectors.qformer.from_hf_state_dict / to_hf_state_dict)
  language_projection.*   projection.linear_1.*
  language_model.*        language_model.*
BLIP-2's generation model has no Q-Former text path and no stage-1 heads, which the blip2-flant5 preset
keeps for its stage 1: loading leaves them as they are, exporting leaves them out.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .model import VisionLanguageModel, VLMOutput
from .packed_masks import document_ids_from_segments, segment_attention_mask
from .preset import Preset

# segment_sdpa runs plain causal sdpa per segment: it has no place for T5's relative position bias.
# flex_attention: transformers 5.24 indexes T5's (1, H, Lq, Lk) position bias with the batch index inside
# its score_mod, which is out of bounds for any batch of more than one row (an inductor IndexError).
SEQ2SEQ_ATTENTION_MODES = ("sdpa", "eager")


# ---------------------------------------------------------------------------------------------
# Packed (encoder, decoder) rows -> decoder inputs and paired segments (their three masks: vlm.packed_masks)
# ---------------------------------------------------------------------------------------------

def decoder_inputs_from_labels(labels: torch.Tensor, document_ids: torch.Tensor, start_token_id: int,
                               pad_token_id: int) -> torch.Tensor:
    """(B, Ld) decoder input ids: each segment's labels shifted right, its first input the start token.

    T5's `_shift_right` per packed sample: a segment never reads the previous sample's last label, and
    -100 (unsupervised) labels are read as padding.
    """
    inputs = torch.full_like(labels, start_token_id)
    inputs[:, 1:] = labels[:, :-1]
    is_start = torch.ones_like(labels, dtype=torch.bool)
    is_start[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    inputs = inputs.masked_fill(is_start, start_token_id)
    return inputs.masked_fill(inputs == -100, pad_token_id)


def _document_ids(ids: torch.Tensor, segment_lengths, document_ids, what: str) -> torch.Tensor:
    if document_ids is not None:
        if document_ids.shape != ids.shape:
            raise ValueError(f"{what} document ids have shape {tuple(document_ids.shape)}; they must match the "
                             f"{what} ids' {tuple(ids.shape)}")
        return document_ids
    if segment_lengths is not None:
        return document_ids_from_segments(segment_lengths, ids.shape[1], ids.device)
    return torch.zeros_like(ids)


def _listed_segments(segment_lengths, document_ids) -> list[int] | None:
    """Samples per row as the caller gave them (a padding tail is not a sample), or None if not given."""
    if segment_lengths is not None:
        rows = segment_lengths.tolist() if isinstance(segment_lengths, torch.Tensor) else segment_lengths
        return [sum(1 for n in row if int(n) > 0) for row in rows]
    if document_ids is not None:
        return [len(set(row)) for row in document_ids.tolist()]
    return None


def paired_document_ids(input_ids, decoder_ids, labels, segment_lengths, document_ids, decoder_segment_lengths,
                        decoder_document_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Le) and (B, Ld) segment ids of the encoder and decoder positions, sample k being id k in both.

    Refuses what would silently mix samples: packed encoder rows without decoder segments, rows whose
    two sides list different sample counts, supervised answers without an encoder segment.
    """
    encoder_documents = _document_ids(input_ids, segment_lengths, document_ids, "encoder")
    decoder_documents = _document_ids(decoder_ids, decoder_segment_lengths, decoder_document_ids, "decoder")
    encoder_samples = _listed_segments(segment_lengths, document_ids)
    decoder_samples = _listed_segments(decoder_segment_lengths, decoder_document_ids)
    if decoder_samples is None and encoder_samples is not None and max(encoder_samples, default=1) > 1:
        raise ValueError(f"input_ids are packed ({encoder_samples} samples per row) but the decoder's are not: "
                         "give decoder_segment_lengths (or decoder_document_ids), one answer per sample, so "
                         "that decoder segment k reads encoder segment k only")
    if segment_lengths is not None and decoder_segment_lengths is not None and encoder_samples != decoder_samples:
        raise ValueError(f"segment_lengths list {encoder_samples} samples per row, decoder_segment_lengths "
                         f"{decoder_samples}; every sample has one encoder and one decoder segment")
    if labels is not None:
        for b in range(labels.shape[0]):
            missing = set(decoder_documents[b][labels[b] != -100].tolist()) - set(encoder_documents[b].tolist())
            if missing:
                raise ValueError(
                    f"row {b}: decoder segment(s) {sorted(missing)} have supervised labels but no encoder segment; "
                    "sample k of a packed row is segment k of both segment_lengths (encoder) and "
                    "decoder_segment_lengths (decoder): give both, with one entry per sample")
    return encoder_documents, decoder_documents


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class EncoderDecoderVLM(VisionLanguageModel):
    """A vision tower, Q-Former and projection feeding FlanT5's encoder; the answer is decoded (BLIP-2, InstructBLIP)."""

    def __init__(self, preset: Preset, vision_config: dict[str, Any], llm_config: dict[str, Any],
                 image_token_id: int, pad_token_id: int, attn_implementation: str = "sdpa",
                 connector_config: dict[str, Any] | None = None):
        # LAVIS and transformers' BLIP-2 conversion both run FlanT5's gated feed-forward with exact GELU;
        # a preset that names dense_act_fn itself wins (Loom's FlanT5 presets do).
        llm_config = {"dense_act_fn": "gelu", **llm_config}
        super().__init__(preset, vision_config, llm_config, image_token_id, pad_token_id,
                         attn_implementation=attn_implementation, connector_config=connector_config)
        if self.llm_config.get("tie_word_embeddings") is False:
            self._untie_lm_head()

    def _untie_lm_head(self) -> None:
        """Gives lm_head its own weight (FlanT5's checkpoints have one; transformers 5.24 ties every T5)."""
        lm = self.language_model
        lm.lm_head.weight = nn.Parameter(lm.shared.weight.detach().clone())
        lm.config.tie_word_embeddings = False
        getattr(lm, "all_tied_weights_keys", {}).pop("lm_head.weight", None)

    def set_attention(self, mode: str) -> None:
        """Selects T5's attention kernel: sdpa or eager (see SEQ2SEQ_ATTENTION_MODES for why not the others)."""
        if mode not in SEQ2SEQ_ATTENTION_MODES:
            raise ValueError(
                f"attention mode {mode!r} cannot run preset {self.preset.name!r}: T5 adds a learned relative "
                f"position bias inside attention, which segment_sdpa has no place for and transformers' "
                f"flex_attention indexes out of bounds for batches of several rows; use one of "
                f"{SEQ2SEQ_ATTENTION_MODES} (packing stays exact: the masks isolate the samples)")
        self.language_model.set_attn_implementation(mode)
        self.attn_implementation = mode

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        segment_lengths: Sequence[Sequence[int]] | torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        decoder_segment_lengths: Sequence[Sequence[int]] | torch.Tensor | None = None,
        decoder_document_ids: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> VLMOutput:
        """Decoder logits and/or loss of packed (encoder, decoder) rows.

        input_ids (B, Le): image placeholders and prompt, the encoder's input; pixel_values (N, 3, H, W)
        the N images in order of appearance; labels (B, Ld) the answers, the decoder's targets (-100
        unsupervised). segment_lengths / document_ids (B, Le) and decoder_segment_lengths /
        decoder_document_ids (B, Ld) say where the samples of a row start, sample k being segment k of
        both. decoder_input_ids default to the labels shifted right within each segment.
        attention_mask (B, Le), 1 for real tokens, hides encoder padding (HF-style padded batches).
        Loss is the mean over supervised decoder tokens, or sum / num_items_in_batch. position_ids are
        accepted for the trainer's common batch and ignored: T5's positions are relative.
        """
        del position_ids
        if labels is None and decoder_input_ids is None:
            raise ValueError("the decoder needs labels (B, Ld) (training) or decoder_input_ids (B, Ld) (decoding)")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; give the (B, Le) padding "
                             "mask of input_ids (1 = real token): this model builds the packed masks itself")
        if labels is not None and decoder_input_ids is not None and labels.shape != decoder_input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} and decoder_input_ids {tuple(decoder_input_ids.shape)} "
                             "differ in shape; decoder position t reads decoder_input_ids[t] and predicts labels[t]")
        decoder_ids = labels if labels is not None else decoder_input_ids
        if decoder_ids.shape[0] != input_ids.shape[0]:
            raise ValueError(f"input_ids hold {input_ids.shape[0]} rows but the decoder's labels "
                             f"{decoder_ids.shape[0]}; row b of both is the same packed samples")
        encoder_documents, decoder_documents = paired_document_ids(
            input_ids, decoder_ids, labels, segment_lengths, document_ids, decoder_segment_lengths,
            decoder_document_ids)  # (B, Le), (B, Ld)
        lm = self.language_model
        if decoder_input_ids is None:
            decoder_input_ids = decoder_inputs_from_labels(labels, decoder_documents, lm.config.decoder_start_token_id,
                                                           lm.config.pad_token_id)

        inputs_embeds = self.embed(input_ids, pixel_values, qformer_input_ids=qformer_input_ids,
                                   qformer_attention_mask=qformer_attention_mask)  # (B, Le, D)
        mode, dtype = self.attn_implementation, inputs_embeds.dtype
        encoder_mask = segment_attention_mask(encoder_documents, encoder_documents, mode, key_is_real=attention_mask,
                                              dtype=dtype)  # (B, 1, Le, Le)
        decoder_mask = segment_attention_mask(decoder_documents, decoder_documents, mode, causal=True,
                                              dtype=dtype)  # (B, 1, Ld, Ld)
        cross_mask = segment_attention_mask(decoder_documents, encoder_documents, mode, key_is_real=attention_mask,
                                            dtype=dtype)  # (B, 1, Ld, Le)
        encoder_hidden = lm.encoder(inputs_embeds=inputs_embeds, attention_mask=encoder_mask).last_hidden_state
        hidden = lm.decoder(input_ids=decoder_input_ids, attention_mask=decoder_mask,
                            encoder_hidden_states=encoder_hidden, encoder_attention_mask=cross_mask,
                            use_cache=False).last_hidden_state  # (B, Ld, D)
        if lm.config.scale_decoder_outputs:  # original T5 only; FlanT5 (v1.1) does not rescale
            hidden = hidden * lm.config.d_model ** -0.5

        loss, num_tokens = None, 0
        if labels is not None:
            supervised = labels != -100  # (B, Ld): decoder inputs are already shifted, so no shift here
            num_tokens = int(supervised.sum())
            logits_supervised = lm.lm_head(hidden[supervised]).float()  # (T, V)
            loss_sum = F.cross_entropy(logits_supervised, labels[supervised], reduction="sum")
            denominator = num_items_in_batch if num_items_in_batch is not None else max(num_tokens, 1)
            loss = loss_sum / denominator
        logits = lm.lm_head(hidden).float() if return_logits else None  # (B, Ld, V)
        return VLMOutput(loss=loss, logits=logits, num_tokens=num_tokens)


# ---------------------------------------------------------------------------------------------
# transformers checkpoints <-> Loom names (see the table in the module docstring)
# ---------------------------------------------------------------------------------------------
