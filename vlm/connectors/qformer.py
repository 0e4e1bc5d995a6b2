"""The Q-Former: 32 learned queries that read a frozen ViT through BERT layers (BLIP-2, InstructBLIP, MiniGPT-4).

BLIP-2 (arXiv 2301.12597) bridges a frozen image encoder and a frozen LLM with a small BERT-base
transformer. Learned query tokens (1, 32, 768) go through BERT layers; every other layer has a
cross-attention from the queries to the image features. Text tokens share the self-attention layers
with the queries but have their own feed-forward, so one module can be an image encoder (queries only),
a text encoder (text only), an image-grounded text encoder (both, bidirectional) and an image-grounded
text decoder (both, multimodal causal). Stage 1 trains it with three losses, each using its own
self-attention mask: image-text contrastive (ITC), image-text matching (ITM) and image-grounded text
generation (ITG). Stage 2 feeds the 32 query outputs, projected, to the LLM. InstructBLIP
(arXiv 2305.06500) also feeds the instruction to the Q-Former: its tokens join the queries in
self-attention, and only the 32 query outputs go on. MiniGPT-4 reuses BLIP-2's stage-1 Q-Former frozen,
with a trainable linear layer after it.

Layout and facts read from:
- salesforce/LAVIS lavis/models/blip2_models/Qformer.py: BertEmbeddings (queries are prepended to
  word + absolute-position embeddings of the text, then one LayerNorm + dropout over all of it; queries
  get no position embedding; text positions start at 0); BertLayer (cross-attention where
  `layer_num % cross_attention_freq == 0`; queries go through `intermediate_query`/`output_query`, text
  through `intermediate`/`output`; the cross-attention sees only the first `query_length` positions);
  the decoder mask of `get_extended_attention_mask` with `has_query` (UniLM style: query rows see no
  text, every row sees every query, text is causal); BertLMHeadModel (LM head = transform dense + gelu +
  LayerNorm, then a decoder tied to the word embeddings with its own bias; shifted next-token loss with
  label_smoothing 0.1).
- salesforce/LAVIS lavis/models/blip2_models/blip2.py: `init_tokenizer` adds "[DEC]" as bos_token to
  bert-base-uncased (vocab 30522 -> 30523, [DEC] = 30522); `init_Qformer` sets cross_attention_freq 2 and
  draws query_tokens from normal(0, 0.02).
- salesforce/LAVIS lavis/models/blip2_models/blip2_qformer.py: the three losses. ITC: vision_proj and
  text_proj to embed_dim 256, L2-normalised; similarity of an image and a text = max over the queries;
  divided by a learned temp (init 0.07); (CE(i2t) + CE(t2i)) / 2 with label_smoothing 0.1; the text side
  is a separate text-only pass and the image side a separate query-only pass. ITM: negatives drawn with
  torch.multinomial from softmax(similarities) + 1e-4 with the positive's weight set to 0; rows are
  (text, image), (text, negative image), (negative text, image); itm_head (2 classes) on every query
  output, logits averaged over the queries; labels [1]*B + [0]*2B. ITG: the text with its first token
  ([CLS]) replaced by [DEC], padding labelled -100, decoded under the multimodal causal mask. The stage-1
  init also copies the text feed-forward into the query feed-forward (`"_query" in name`).
- salesforce/LAVIS lavis/models/blip2_models/blip2_vicuna_instruct.py (and blip2_t5_instruct.py): the
  instruction goes in as text ids with mask [ones(32), instruction mask] (bidirectional); the LLM gets
  `last_hidden_state[:, :32]`; with `qformer_text_input=False` (BLIP-2 stage 2, MiniGPT-4) the word and
  position embeddings and every layer's text feed-forward are deleted, and `Qformer.cls` (the LM head)
  is deleted in every stage-2 model.
- Vision-CAIR/MiniGPT-4 minigpt4/models/mini_gpt4.py: the same stage-2 Q-Former, frozen and in eval mode,
  loaded from the BLIP-2 stage-1 checkpoint; a trainable `llama_proj` Linear after it.
- huggingface/transformers models/blip_2/modeling_blip_2.py and models/instructblip/modeling_instructblip.py
  (v5.24): the parameter names used here, and the weight mapping below.

Weight names. This module's parameter names ARE those of transformers' InstructBlipQFormerModel (plus
`query_tokens`), so the mapping is a renaming of prefixes, one to one, tested both ways (HF_RENAMES):

  InstructBlipForConditionalGeneration: query_tokens -> query_tokens; every other Q-Former name X -> qformer.X.
  Blip2ForConditionalGeneration, and [1] Blip2ForImageTextRetrieval (`use_qformer_text_input=True`):
    query_tokens                       query_tokens
    embeddings.layernorm.*             qformer.layernorm.*
    encoder.layer.{i}.*                qformer.encoder.layer.{i}.*
    embeddings.word_embeddings.*       embeddings.word_embeddings.*        [1] (outside `qformer`)
    embeddings.position_embeddings.*   embeddings.position_embeddings.*    [1]
    vision_proj.*, text_proj.*         vision_projection.*, text_projection.*  [1]
    itm_head.*                         itm_head.*                          [1]
  Blip2ForConditionalGeneration has no text path at all: build its Q-Former with `text_input=False`.
No transformers class holds `temp` or the ITG `lm_head`, nor InstructBLIP any stage-1 head: export leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

Variant = Literal["blip2", "instructblip"]


@dataclass
class QFormerConfig:
    """Sizes of a Q-Former; defaults are BLIP-2's (BERT-base, 32 queries, EVA ViT-g features)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    cross_attention_frequency: int = 2  # layers 0, 2, 4, ... cross-attend to the image
    encoder_hidden_size: int = 1408  # the vision width: 1408 for EVA ViT-g, 1024 for CLIP ViT-L
    num_query_tokens: int = 32
    vocab_size: int = 30523  # bert-base-uncased's 30522 + [DEC]
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0  # [PAD] in bert-base-uncased
    dec_token_id: int = 30522  # [DEC], the first token of every ITG caption instead of [CLS]
    embed_dim: int = 256  # the ITC projection
    label_smoothing: float = 0.1  # ITC and ITG in LAVIS; ITM uses none
    text_input: bool = True  # word/position embeddings and the text feed-forward (False: BLIP-2 stage 2, MiniGPT-4)
    stage1_heads: bool = True  # vision_proj, text_proj, itm_head, temp, lm_head (only stage 1 has them)

    @classmethod
    def tiny(cls, **overrides) -> "QFormerConfig":
        """A Q-Former small enough for CPU tests: 4 layers of width 32, 4 queries, 64 words."""
        sizes = dict(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            encoder_hidden_size=48, num_query_tokens=4, vocab_size=64, max_position_embeddings=32,
            dec_token_id=63, embed_dim=16,
        )
        return cls(**{**sizes, **overrides})

    @classmethod
    def from_hf(cls, qformer_config, num_query_tokens: int = 32, **overrides) -> "QFormerConfig":
        """The config matching a transformers Blip2QFormerConfig or InstructBlipQFormerConfig."""
        fields = dict(
            hidden_size=qformer_config.hidden_size,
            num_hidden_layers=qformer_config.num_hidden_layers,
            num_attention_heads=qformer_config.num_attention_heads,
            intermediate_size=qformer_config.intermediate_size,
            hidden_act=qformer_config.hidden_act,
            cross_attention_frequency=qformer_config.cross_attention_frequency,
            encoder_hidden_size=qformer_config.encoder_hidden_size,
            num_query_tokens=num_query_tokens,
            vocab_size=qformer_config.vocab_size,
            max_position_embeddings=qformer_config.max_position_embeddings,
            layer_norm_eps=qformer_config.layer_norm_eps,
            hidden_dropout_prob=qformer_config.hidden_dropout_prob,
            attention_probs_dropout_prob=qformer_config.attention_probs_dropout_prob,
            pad_token_id=qformer_config.pad_token_id,
            # InstructBLIP's config has no such flag: its Q-Former always reads the instruction
            text_input=getattr(qformer_config, "use_qformer_text_input", True),
            stage1_heads=False,
        )
        return cls(**{**fields, **overrides})


# ---------------------------------------------------------------------------------------------
# The three stage-1 self-attention masks: (N, Q+T, Q+T) bool, True where row i may attend to key j
# ---------------------------------------------------------------------------------------------

def _text_keys(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """(N, 1, Q+T) which keys exist: every query, and the text tokens that are not padding."""
    queries = torch.ones(text_mask.shape[0], num_queries, dtype=torch.bool, device=text_mask.device)
    return torch.cat([queries, text_mask.bool()], dim=1)[:, None, :]


def unimodal_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """ITC: queries see only queries, text sees only text, so neither leaks into the other's embedding."""
    length = num_queries + text_mask.shape[1]
    is_query = torch.arange(length, device=text_mask.device) < num_queries
    same_modality = is_query[:, None] == is_query[None, :]  # (Q+T, Q+T)
    return same_modality[None] & _text_keys(num_queries, text_mask)


def bidirectional_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """ITM (and InstructBLIP's instruction): queries and text all see each other; only padding is hidden."""
    length = num_queries + text_mask.shape[1]
    return _text_keys(num_queries, text_mask).expand(-1, length, -1)


def multimodal_causal_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """ITG: queries see all queries but no text; text token t sees all queries and text tokens 0..t."""
    length = num_queries + text_mask.shape[1]
    index = torch.arange(length, device=text_mask.device)
    is_query = index < num_queries
    allowed = is_query[None, :] | (~is_query[:, None] & (index[None, :] <= index[:, None]))  # (Q+T, Q+T)
    return allowed[None] & _text_keys(num_queries, text_mask)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The same mask as LAVIS adds it to attention scores: 0 where allowed, a large negative elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


# ---------------------------------------------------------------------------------------------
# BERT pieces, named as transformers names them so checkpoints map one to one
# ---------------------------------------------------------------------------------------------

class QFormerEmbeddings(nn.Module):
    """Queries prepended to word + position embeddings of the text, then one LayerNorm over both."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        if config.text_input:
            self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, queries: torch.Tensor | None, text_ids: torch.Tensor | None) -> torch.Tensor:
        parts = [] if queries is None else [queries]
        if text_ids is not None:
            if not hasattr(self, "word_embeddings"):
                raise ValueError("this Q-Former was built with text_input=False (BLIP-2 stage 2); it reads no "
                                 "text: build it with QFormerConfig(text_input=True) to pass text_ids")
            length = text_ids.shape[1]
            if length > self.position_embeddings.num_embeddings:
                raise ValueError(f"text_ids: {length} tokens, more than the {self.position_embeddings.num_embeddings}"
                                 " positions of the Q-Former; truncate the text (LAVIS uses 32 for captions)")
            positions = torch.arange(length, device=text_ids.device)  # text starts at 0: queries have no position
            parts.append(self.word_embeddings(text_ids) + self.position_embeddings(positions))
        return self.dropout(self.layernorm(torch.cat(parts, dim=1)))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention; keys and values come from `key_value_size`-wide states."""

    def __init__(self, config: QFormerConfig, key_value_size: int):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of "
                             f"num_attention_heads {config.num_attention_heads}")
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(key_value_size, config.hidden_size)
        self.value = nn.Linear(key_value_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, key_value_states: torch.Tensor,
                allowed: torch.Tensor | None) -> torch.Tensor:
        def heads(x):  # (N, L, H) -> (N, heads, L, H / heads)
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(hidden)), heads(self.key(key_value_states)), heads(self.value(key_value_states)),
            attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0,
        )  # (N, heads, L, H / heads)
        return out.transpose(1, 2).flatten(2)  # (N, L, H)


class AddAndNorm(nn.Module):
    """BERT's sub-layer output: dense, dropout, residual, LayerNorm."""

    def __init__(self, in_size: int, config: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class AttentionBlock(nn.Module):
    """Self- or cross-attention followed by its add-and-norm."""

    def __init__(self, config: QFormerConfig, key_value_size: int):
        super().__init__()
        self.attention = MultiHeadAttention(config, key_value_size)
        self.output = AddAndNorm(config.hidden_size, config)

    def forward(self, hidden, key_value_states, allowed):
        return self.output(self.attention(hidden, key_value_states, allowed), hidden)


class Intermediate(nn.Module):
    """The first half of BERT's feed-forward: dense to intermediate_size and GELU."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class QFormerLayer(nn.Module):
    """Shared self-attention; cross-attention for the queries only; one feed-forward per modality."""

    def __init__(self, config: QFormerConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.attention = AttentionBlock(config, config.hidden_size)
        has_cross_attention = layer_index % config.cross_attention_frequency == 0
        self.crossattention = AttentionBlock(config, config.encoder_hidden_size) if has_cross_attention else None
        if config.text_input:
            self.intermediate = Intermediate(config)
            self.output = AddAndNorm(config.intermediate_size, config)
        self.intermediate_query = Intermediate(config)
        self.output_query = AddAndNorm(config.intermediate_size, config)

    def forward(self, hidden, allowed, image_features, image_allowed, num_queries):
        hidden = self.attention(hidden, hidden, allowed)  # (N, Q+T, H)
        queries, text = hidden[:, :num_queries], hidden[:, num_queries:]
        parts = []
        if num_queries:
            if self.crossattention is not None:
                if image_features is None:
                    raise ValueError(f"Q-Former layer {self.layer_index} cross-attends to the image: pass "
                                     "image_features (N, P, encoder_hidden_size) with the queries")
                queries = self.crossattention(queries, image_features, image_allowed)  # (N, Q, H)
            parts.append(self.output_query(self.intermediate_query(queries), queries))
        if text.shape[1]:
            parts.append(self.output(self.intermediate(text), text))
        return torch.cat(parts, dim=1)


class QFormerEncoder(nn.Module):
    """The stack of Q-Former layers."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.layer = nn.ModuleList(QFormerLayer(config, i) for i in range(config.num_hidden_layers))

    def forward(self, hidden, allowed, image_features, image_allowed, num_queries):
        for layer in self.layer:
            hidden = layer(hidden, allowed, image_features, image_allowed, num_queries)
        return hidden


class LMHead(nn.Module):
    """BERT's LM head: dense, GELU, LayerNorm, then the word embeddings (tied) with a bias of its own."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.LayerNorm(self.act(self.dense(hidden))), word_embeddings, self.bias)


# ---------------------------------------------------------------------------------------------
# The Q-Former
# ---------------------------------------------------------------------------------------------

def sample_hard_negatives(
    similarity: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM's hard negatives from the (B, B) image-to-text ITC similarities: (text per image, image per text).

    Each image draws one other text with probability softmax(its similarities) + 1e-4, and each text one
    other image likewise; the positive's weight is zeroed so it is never drawn. The +1e-4 keeps every
    negative possible even when the softmax underflows.
    """
    batch = similarity.shape[0]
    if batch < 2:
        raise ValueError("ITM needs at least 2 image-text pairs in a batch: negatives are drawn from the "
                         "other pairs of the batch")
    with torch.no_grad():
        positive = torch.eye(batch, dtype=torch.bool, device=similarity.device)
        weights_i2t = (F.softmax(similarity.float(), dim=1) + 1e-4).masked_fill(positive, 0)
        weights_t2i = (F.softmax(similarity.t().float(), dim=1) + 1e-4).masked_fill(positive, 0)
        negative_text = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1)  # (B,)
        negative_image = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1)  # (B,)
    return negative_text, negative_image


class QFormer(nn.Module):
    """BLIP-2's Querying Transformer: learned queries that read image features, alone or with text."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.config = config
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.hidden_size))
        self.embeddings = QFormerEmbeddings(config)
        self.encoder = QFormerEncoder(config)
        if config.stage1_heads:
            if not config.text_input:
                raise ValueError("stage1_heads needs text_input=True: ITC, ITM and ITG all read text")
            self.vision_proj = nn.Linear(config.hidden_size, config.embed_dim)
            self.text_proj = nn.Linear(config.hidden_size, config.embed_dim)
            self.itm_head = nn.Linear(config.hidden_size, 2)
            self.lm_head = LMHead(config)
            self.temp = nn.Parameter(torch.tensor(0.07))
        self.apply(self._init_weights)
        nn.init.normal_(self.query_tokens, std=config.initializer_range)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's init: normal(0, 0.02) weights, zero biases, unit LayerNorms, a zero padding embedding."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def copy_text_ffn_to_queries(self) -> None:
        """Start the query feed-forward as a copy of the text one, as LAVIS does after loading BERT weights."""
        if not self.config.text_input:
            raise ValueError("copy_text_ffn_to_queries: this Q-Former has no text feed-forward (text_input=False)")
        for layer in self.encoder.layer:
            layer.intermediate_query.load_state_dict(layer.intermediate.state_dict())
            layer.output_query.load_state_dict(layer.output.state_dict())

    def forward(
        self,
        image_features: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        self_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, Q [+T], H) hidden states of the queries [and text] after reading the image.

        image_features (N, P, Dv) from the vision tower (after its final LayerNorm, LAVIS's ln_vision);
        image_mask (N, P), 1 for real patches; text_ids / text_mask (N, T); self_attention_mask
        (N, Q+T, Q+T) bool overrides the default, which is `bidirectional_mask` (ITM, InstructBLIP).
        """
        batch = image_features.shape[0]
        queries = self.query_tokens.expand(batch, -1, -1)  # (N, Q, H)
        hidden = self.embeddings(queries, text_ids)  # (N, Q+T, H)
        if self_attention_mask is None and text_ids is not None:
            if text_mask is None:
                text_mask = torch.ones_like(text_ids)
            self_attention_mask = bidirectional_mask(queries.shape[1], text_mask)
        allowed = None if self_attention_mask is None else self_attention_mask[:, None]  # (N, 1, L, L)
        image_allowed = None if image_mask is None else image_mask.bool()[:, None, None, :]  # (N, 1, 1, P)
        return self.encoder(hidden, allowed, image_features, image_allowed, queries.shape[1])

    def visual_tokens(
        self,
        image_features: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, Q, H) what the LLM is given (through its own projection): the query outputs only.

        With an instruction (InstructBLIP) its tokens share self-attention with the queries, so the
        queries extract what the instruction asks about; the instruction's own outputs are dropped.
        """
        hidden = self(image_features, image_mask, instruction_ids, instruction_mask)
        return hidden[:, : self.config.num_query_tokens]

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T, H) the text alone, as BERT would encode it: no queries, no image (ITC's text side)."""
        if text_mask is None:
            text_mask = torch.ones_like(text_ids)
        hidden = self.embeddings(None, text_ids)  # (N, T, H)
        allowed = text_mask.bool()[:, None, None, :]  # (N, 1, 1, T): padding keys hidden
        return self.encoder(hidden, allowed, None, None, num_queries=0)

    # --- stage 1 -------------------------------------------------------------------------------

    def stage1_losses(
        self,
        image_features: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """BLIP-2's stage-1 losses on a batch of B matching image-text pairs: itc, itm, itg and their sum.

        text_ids start with [CLS] (bert-base-uncased tokenisation); ITG swaps it for [DEC].
        Negatives are the other pairs of the batch (one process: no gather across devices).
        """
        if not self.config.stage1_heads:
            raise ValueError("this Q-Former has no stage-1 heads; build it with QFormerConfig(stage1_heads=True)")
        batch, num_queries = image_features.shape[0], self.config.num_query_tokens
        smoothing = self.config.label_smoothing

        # ITC: two passes, queries alone and text alone (the unimodal mask, as LAVIS runs it)
        query_output = self(image_features, image_mask)  # (B, Q, H)
        text_output = self.encode_text(text_ids, text_mask)  # (B, T, H)
        image_embeds = F.normalize(self.vision_proj(query_output), dim=-1)  # (B, Q, E)
        text_embed = F.normalize(self.text_proj(text_output[:, 0]), dim=-1)  # (B, E): the [CLS] output
        similarity = torch.einsum("iqe,te->itq", image_embeds, text_embed).amax(dim=-1) / self.temp  # (B, B)
        targets = torch.arange(batch, device=similarity.device)
        # on one process LAVIS's text-to-image similarities are exactly the transpose (same max over queries)
        itc = (F.cross_entropy(similarity, targets, label_smoothing=smoothing)
               + F.cross_entropy(similarity.t(), targets, label_smoothing=smoothing)) / 2

        # ITM: (text, image) positives, then (text, hard negative image), (hard negative text, image)
        negative_text, negative_image = sample_hard_negatives(similarity.detach(), generator)
        itm_text_ids = torch.cat([text_ids, text_ids, text_ids[negative_text]])  # (3B, T)
        itm_text_mask = torch.cat([text_mask, text_mask, text_mask[negative_text]])
        itm_images = torch.cat([image_features, image_features[negative_image], image_features])  # (3B, P, Dv)
        itm_image_mask = None if image_mask is None else torch.cat(
            [image_mask, image_mask[negative_image], image_mask])
        itm_hidden = self(itm_images, itm_image_mask, itm_text_ids, itm_text_mask,
                          bidirectional_mask(num_queries, itm_text_mask))  # (3B, Q+T, H)
        itm_logits = self.itm_head(itm_hidden[:, :num_queries]).mean(dim=1)  # (3B, 2): averaged over queries
        itm_labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(itm_logits.device)
        itm = F.cross_entropy(itm_logits, itm_labels)

        # ITG: caption decoded from the queries under the multimodal causal mask, [DEC] first
        decoder_ids = text_ids.clone()
        decoder_ids[:, 0] = self.config.dec_token_id
        labels = decoder_ids.masked_fill(text_mask == 0, -100)
        hidden = self(image_features, image_mask, decoder_ids, text_mask,
                      multimodal_causal_mask(num_queries, text_mask))  # (B, Q+T, H)
        logits = self.lm_head(hidden[:, num_queries:], self.embeddings.word_embeddings.weight)  # (B, T, V)
        itg = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                              ignore_index=-100, label_smoothing=smoothing)

        return {"itc": itc, "itm": itm, "itg": itg, "loss": itc + itm + itg}


# ---------------------------------------------------------------------------------------------
# transformers checkpoints <-> Loom names (see the table in the module docstring)
# ---------------------------------------------------------------------------------------------

# (Loom prefix, transformers prefix); a name matches a rule by prefix, the first rule wins
HF_RENAMES: dict[str, list[tuple[str, str]]] = {
    "instructblip": [
        ("query_tokens", "query_tokens"),
        ("embeddings.", "qformer.embeddings."),
        ("encoder.", "qformer.encoder."),
    ],
    "blip2": [
        ("query_tokens", "query_tokens"),
        ("embeddings.layernorm.", "qformer.layernorm."),
        ("embeddings.word_embeddings.", "embeddings.word_embeddings."),
        ("embeddings.position_embeddings.", "embeddings.position_embeddings."),
        ("encoder.", "qformer.encoder."),
        ("vision_proj.", "vision_projection."),
        ("text_proj.", "text_projection."),
        ("itm_head.", "itm_head."),
    ],
}


def _rename(state: dict[str, torch.Tensor], variant: str, source: int) -> dict[str, torch.Tensor]:
    if variant not in HF_RENAMES:
        raise ValueError(f"variant {variant!r} is not one of {sorted(HF_RENAMES)}")
    target = 1 - source
    renamed = {}
    for name, tensor in state.items():
        for rule in HF_RENAMES[variant]:
            if name == rule[source] or (rule[source].endswith(".") and name.startswith(rule[source])):
                renamed[rule[target] + name[len(rule[source]):]] = tensor
                break
    return renamed


def from_hf_state_dict(state: dict[str, torch.Tensor], variant: Variant) -> dict[str, torch.Tensor]:
    """A transformers BLIP-2 / InstructBLIP state dict renamed to this module's names.

    `state` is laid out as Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval or
    InstructBlipForConditionalGeneration hold it (`query_tokens`, `qformer.*`, ...); keys outside the
    Q-Former (vision_model, language_model, language_projection) are left out. Load the result with
    `QFormer.load_state_dict(..., strict=True)`, from a config whose `text_input` / `stage1_heads` match.
    """
    return _rename(state, variant, source=1)


def to_hf_state_dict(state: dict[str, torch.Tensor], variant: Variant) -> dict[str, torch.Tensor]:
    """This module's state dict under transformers' names; parameters transformers has no place for
    (temp, lm_head, and for InstructBLIP the stage-1 heads) are left out."""
    return _rename(state, variant, source=0)
