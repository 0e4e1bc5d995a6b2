"""The Q-Former connector (vlm.connectors.qformer): layers, the three stage-1 masks and losses, HF weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
)

from vlm.connectors.qformer import (
    QFormer,
    QFormerConfig,
    additive_mask,
    bidirectional_mask,
    from_hf_state_dict,
    multimodal_causal_mask,
    sample_hard_negatives,
    to_hf_state_dict,
    unimodal_mask,
)

Q = 4  # QFormerConfig.tiny's query count
HF_SIZES = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                encoder_hidden_size=48, vocab_size=64, max_position_embeddings=32, cross_attention_frequency=2)


def tiny_qformer(seed: int = 0, **overrides) -> QFormer:
    torch.manual_seed(seed)
    return QFormer(QFormerConfig.tiny(**overrides)).eval()


def image_features(batch: int = 3, patches: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, patches, 48, generator=torch.Generator().manual_seed(seed))


def captions(batch: int = 3, length: int = 6, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS]-first ids with right padding of different lengths per row (row b keeps length - b tokens)."""
    ids = torch.randint(3, 60, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 1  # [CLS] of the tiny vocabulary
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        mask[b, length - b:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight random (LayerNorms and biases too), so a misplaced tensor cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def as_grid(mask: torch.Tensor) -> list[str]:
    return ["".join("1" if allowed else "0" for allowed in row) for row in mask.tolist()]


# --- config and shapes ---------------------------------------------------------------------------

def test_defaults_are_blip2s_q_former():
    config = QFormerConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.intermediate_size, config.cross_attention_frequency, config.num_query_tokens) == (3072, 2, 32)
    assert (config.encoder_hidden_size, config.embed_dim, config.max_position_embeddings) == (1408, 256, 512)
    assert (config.vocab_size, config.dec_token_id, config.pad_token_id) == (30523, 30522, 0)
    assert (config.layer_norm_eps, config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (1e-12, .1, .1)


def test_output_shapes_for_queries_alone_with_text_and_text_alone():
    model = tiny_qformer()
    ids, mask = captions()
    assert model.query_tokens.shape == (1, Q, 32)
    assert model(image_features()).shape == (3, Q, 32)
    assert model(image_features(), text_ids=ids, text_mask=mask).shape == (3, Q + 6, 32)
    assert model.visual_tokens(image_features(), instruction_ids=ids, instruction_mask=mask).shape == (3, Q, 32)
    assert model.encode_text(ids, mask).shape == (3, 6, 32)


@pytest.mark.parametrize("frequency, layers, expected", [(2, 4, [0, 2]), (1, 3, [0, 1, 2]), (3, 5, [0, 3])])
def test_cross_attention_only_where_layer_index_is_a_multiple_of_the_frequency(frequency, layers, expected):
    model = tiny_qformer(cross_attention_frequency=frequency, num_hidden_layers=layers)
    assert [i for i, layer in enumerate(model.encoder.layer) if layer.crossattention is not None] == expected
    with_keys = sorted({int(name.split(".")[2]) for name in model.state_dict() if ".crossattention." in name})
    assert with_keys == expected
    assert model.encoder.layer[0].crossattention.attention.key.in_features == 48  # keys read the vision width


def test_queries_and_text_use_their_own_feed_forward():
    model = tiny_qformer()
    ids, mask = captions()
    queries_before, text_before = model(image_features()), model.encode_text(ids, mask)
    with torch.no_grad():
        model.encoder.layer[1].intermediate.dense.weight.add_(1.0)  # text feed-forward only
    assert torch.equal(model(image_features()), queries_before)
    assert not torch.allclose(model.encode_text(ids, mask), text_before)
    with torch.no_grad():
        model.encoder.layer[1].intermediate_query.dense.weight.add_(1.0)  # query feed-forward only
    assert not torch.allclose(model(image_features()), queries_before)


def test_text_positions_start_at_zero_after_the_queries():
    model = tiny_qformer()
    ids, _ = captions()
    embeddings = model.embeddings
    joint = embeddings(model.query_tokens.expand(3, -1, -1), ids)  # (3, Q+6, 32)
    text_alone = embeddings.layernorm(embeddings.word_embeddings(ids) + embeddings.position_embeddings.weight[:6])
    assert torch.allclose(joint[:, Q:], text_alone)
    assert torch.allclose(joint[:, :Q], embeddings.layernorm(model.query_tokens).expand(3, -1, -1))


def test_copy_text_ffn_to_queries_makes_both_feed_forwards_equal():
    model = tiny_qformer()
    model.copy_text_ffn_to_queries()
    for layer in model.encoder.layer:
        assert torch.equal(layer.intermediate_query.dense.weight, layer.intermediate.dense.weight)
        assert torch.equal(layer.output_query.LayerNorm.bias, layer.output.LayerNorm.bias)
        assert layer.output_query.dense.weight.data_ptr() != layer.output.dense.weight.data_ptr()  # copies


def test_stage2_q_former_has_no_text_path():
    model = tiny_qformer(text_input=False, stage1_heads=False)
    names = set(model.state_dict())
    text_feed_forward = [n for n in names if n.split(".")[3:4] in (["intermediate"], ["output"])]
    assert text_feed_forward == [] and not any("position_embeddings" in n or "word_embeddings" in n for n in names)
    assert "encoder.layer.0.output_query.dense.weight" in names and "embeddings.layernorm.weight" in names
    assert not any(n.startswith(("itm_head", "lm_head", "vision_proj", "text_proj", "temp")) for n in names)
    with pytest.raises(ValueError, match="text_input=False"):
        model(image_features(), text_ids=captions()[0])


# --- the three masks, element by element (3 queries, 4 text tokens) -----------------------------

MASK_TEXT = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def test_unimodal_mask_keeps_queries_and_text_apart():
    mask = unimodal_mask(3, MASK_TEXT)
    assert mask.shape == (2, 7, 7) and mask.dtype == torch.bool
    assert as_grid(mask[0]) == ["1110000"] * 3 + ["0001111"] * 4
    assert as_grid(mask[1]) == ["1110000"] * 3 + ["0001100"] * 4  # padded text keys hidden from every row


def test_bidirectional_mask_lets_everything_see_everything_but_padding():
    mask = bidirectional_mask(3, MASK_TEXT)
    assert as_grid(mask[0]) == ["1111111"] * 7
    assert as_grid(mask[1]) == ["1111100"] * 7


def test_multimodal_causal_mask_queries_see_queries_text_sees_queries_and_its_past():
    mask = multimodal_causal_mask(3, MASK_TEXT)
    assert as_grid(mask[0]) == ["1110000"] * 3 + ["1111000", "1111100", "1111110", "1111111"]
    assert as_grid(mask[1]) == ["1110000"] * 3 + ["1111000", "1111100", "1111100", "1111100"]


def test_additive_mask_is_zero_where_allowed_and_most_negative_elsewhere():
    allowed = multimodal_causal_mask(3, MASK_TEXT)
    added = additive_mask(allowed)
    assert torch.equal(added == 0, allowed)
    assert torch.all(added[~allowed] == torch.finfo(torch.float32).min)


def test_unimodal_mask_in_one_pass_equals_the_two_itc_passes():
    model = tiny_qformer()
    ids, mask = captions()
    joint = model(image_features(), text_ids=ids, text_mask=mask, self_attention_mask=unimodal_mask(Q, mask))
    assert torch.allclose(joint[:, :Q], model(image_features()), atol=1e-6)
    assert torch.allclose(joint[:, Q:], model.encode_text(ids, mask), atol=1e-6)


def test_multimodal_causal_mask_hides_later_text_from_earlier_text_and_all_text_from_queries():
    model = tiny_qformer()
    ids, mask = captions(batch=1)
    causal = multimodal_causal_mask(Q, mask)
    before = model(image_features(1), text_ids=ids, text_mask=mask, self_attention_mask=causal)
    changed = ids.clone()
    changed[0, 4] = 5 if ids[0, 4] != 5 else 6
    after = model(image_features(1), text_ids=changed, text_mask=mask, self_attention_mask=causal)
    assert torch.equal(after[:, : Q + 4], before[:, : Q + 4])  # queries and text 0..3 cannot see token 4
    assert not torch.allclose(after[:, Q + 4:], before[:, Q + 4:])
    other_image = model(image_features(1, seed=9), text_ids=ids, text_mask=mask, self_attention_mask=causal)
    assert not torch.allclose(other_image[:, Q:], before[:, Q:])  # text reads the image through the queries


def test_image_mask_hides_padded_patches_from_the_queries():
    model = tiny_qformer()
    features, image_mask = image_features(), torch.ones(3, 7)
    image_mask[:, 5:] = 0
    noisy = features.clone()
    noisy[:, 5:] = 100.0
    assert torch.allclose(model(features, image_mask), model(noisy, image_mask), atol=1e-6)
    assert not torch.allclose(model(features), model(noisy))


# --- the three losses ----------------------------------------------------------------------------

def test_stage1_losses_are_finite_scalars_that_reach_the_query_tokens():
    model = tiny_qformer().train()
    ids, mask = captions()
    losses = model.stage1_losses(image_features(), ids, mask, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"itc", "itm", "itg", "loss"}
    assert torch.allclose(losses["loss"], losses["itc"] + losses["itm"] + losses["itg"])
    for name in ("itc", "itm", "itg"):
        assert losses[name].shape == () and torch.isfinite(losses[name])
        (grad,) = torch.autograd.grad(losses[name], model.query_tokens, retain_graph=True)
        assert grad.abs().sum() > 0, name
    losses["loss"].backward()
    assert model.temp.grad is not None and model.itm_head.weight.grad.abs().sum() > 0
    assert model.lm_head.dense.weight.grad.abs().sum() > 0


def test_itc_is_the_symmetric_cross_entropy_of_max_over_queries_similarity():
    model = tiny_qformer()
    ids, mask = captions()
    image = F.normalize(model.vision_proj(model(image_features())), dim=-1)  # (3, Q, 16)
    text = F.normalize(model.text_proj(model.encode_text(ids, mask)[:, 0]), dim=-1)  # (3, 16)
    similarity = torch.stack([(image[i] @ text.t()).max(dim=0).values for i in range(3)]) / 0.07  # (3 images, 3 texts)
    targets = torch.arange(3)
    expected = (F.cross_entropy(similarity, targets, label_smoothing=0.1)
                + F.cross_entropy(similarity.t(), targets, label_smoothing=0.1)) / 2
    assert torch.allclose(model.stage1_losses(image_features(), ids, mask)["itc"], expected, atol=1e-6)


def test_itm_scores_positives_then_negative_images_then_negative_texts():
    model = tiny_qformer()
    ids, mask = captions()
    images = image_features()
    losses = model.stage1_losses(images, ids, mask, generator=torch.Generator().manual_seed(5))
    image = F.normalize(model.vision_proj(model(images)), dim=-1)
    text = F.normalize(model.text_proj(model.encode_text(ids, mask)[:, 0]), dim=-1)
    similarity = torch.einsum("iqe,te->itq", image, text).amax(-1) / model.temp
    negative_text, negative_image = sample_hard_negatives(similarity, torch.Generator().manual_seed(5))
    rows = [(ids, mask, images), (ids, mask, images[negative_image]), (ids[negative_text], mask[negative_text], images)]
    logits = torch.cat([model.itm_head(model(im, None, i, m)[:, :Q]).mean(dim=1) for i, m, im in rows])  # (9, 2)
    expected = F.cross_entropy(logits, torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0]))
    assert torch.allclose(losses["itm"], expected, atol=1e-6)


def test_itg_predicts_the_caption_after_dec_and_ignores_padding():
    model = tiny_qformer()
    ids, mask = captions()
    itg = model.stage1_losses(image_features(), ids, mask)["itg"]
    other_first = ids.clone()
    other_first[:, 0] = 2  # [CLS] is replaced by [DEC], so the first id never matters
    other_padding = ids.masked_fill(mask == 0, 7)  # padded positions are neither inputs anyone sees nor labels
    assert torch.allclose(model.stage1_losses(image_features(), other_first, mask)["itg"], itg)
    assert torch.allclose(model.stage1_losses(image_features(), other_padding, mask)["itg"], itg, atol=1e-6)
    # and by hand: [DEC] + caption under the multimodal causal mask, shifted, label smoothing 0.1
    decoder_ids = ids.clone()
    decoder_ids[:, 0] = 63
    hidden = model(image_features(), None, decoder_ids, mask, multimodal_causal_mask(Q, mask))
    logits = model.lm_head(hidden[:, Q:], model.embeddings.word_embeddings.weight)
    labels = decoder_ids.masked_fill(mask == 0, -100)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1), label_smoothing=0.1)
    assert torch.allclose(itg, expected, atol=1e-6)


def test_lm_head_decoder_is_tied_to_the_word_embeddings():
    model = tiny_qformer()
    assert not any("decoder" in name for name in model.state_dict())
    hidden = torch.randn(2, 3, 32)
    before = model.lm_head(hidden, model.embeddings.word_embeddings.weight)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[10] += 1.0
    after = model.lm_head(hidden, model.embeddings.word_embeddings.weight)
    assert not torch.allclose(after[..., 10], before[..., 10])
    others = torch.arange(64) != 10
    assert torch.equal(after[..., others], before[..., others])  # a word's embedding is its output row only


def test_hard_negatives_are_never_the_positive_pair():
    similarity = torch.randn(5, 5, generator=torch.Generator().manual_seed(0)) * 5
    similarity.fill_diagonal_(50.0)  # the positive is by far the most similar: it must still never be drawn
    generator = torch.Generator().manual_seed(1)
    for _ in range(100):
        negative_text, negative_image = sample_hard_negatives(similarity, generator)
        assert torch.all(negative_text != torch.arange(5)) and torch.all(negative_image != torch.arange(5))


def test_hard_negatives_favour_the_most_similar_wrong_pair():
    similarity = torch.zeros(3, 3)
    similarity[0, 2] = 6.0  # image 0 looks like text 2
    generator = torch.Generator().manual_seed(0)
    draws = [sample_hard_negatives(similarity, generator) for _ in range(100)]
    negative_text = torch.stack([text for text, _ in draws])  # (100, 3)
    negative_image = torch.stack([image for _, image in draws])  # (100, 3)
    assert (negative_text[:, 0] == 2).float().mean() > 0.9  # image 0's negative: the look-alike text 2
    assert (negative_image[:, 2] == 0).float().mean() > 0.9  # text 2's negative: image 0
    assert set(negative_text[:, 1].tolist()) == {0, 2}  # image 1's similarities are flat: either other text


def test_hard_negatives_need_two_pairs():
    with pytest.raises(ValueError, match="at least 2"):
        sample_hard_negatives(torch.zeros(1, 1))


# --- freezing ------------------------------------------------------------------------------------

def test_frozen_q_former_gets_no_gradient_while_the_projection_after_it_does():
    model = tiny_qformer(text_input=False, stage1_heads=False)
    model.requires_grad_(False)
    projection = torch.nn.Linear(32, 24)  # MiniGPT-4's llama_proj / BLIP-2's language_projection
    loss = projection(model.visual_tokens(image_features())).pow(2).mean()
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


# --- transformers weights ------------------------------------------------------------------------

def hf_layout(qformer: torch.nn.Module, query_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """A bare transformers Q-Former's weights as the composite model holds them."""
    return {"query_tokens": query_tokens, **{f"qformer.{k}": v for k, v in qformer.state_dict().items()}}


def bare_qformer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("qformer."): v for k, v in state.items() if k.startswith("qformer.")}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_blip2_weights_load_and_give_hf_outputs(attention):
    torch.manual_seed(0)
    hf = Blip2QFormerModel(Blip2QFormerConfig(**HF_SIZES, attn_implementation=attention)).eval()
    randomize(hf)
    query_tokens = torch.randn(1, Q, 32)
    ours = QFormer(QFormerConfig.from_hf(hf.config, num_query_tokens=Q)).eval()
    assert not ours.config.text_input and not ours.config.stage1_heads
    ours.load_state_dict(from_hf_state_dict(hf_layout(hf, query_tokens), "blip2"), strict=True)

    features, image_mask = image_features(), torch.ones(3, 7, dtype=torch.long)
    image_mask[1, 4:] = 0
    with torch.no_grad():
        expected = hf(query_embeds=query_tokens.expand(3, -1, -1), encoder_hidden_states=features,
                      encoder_attention_mask=image_mask).last_hidden_state
        got = ours.visual_tokens(features, image_mask)
    assert (got - expected).abs().max() <= 1e-5

    exported = to_hf_state_dict(ours.state_dict(), "blip2")
    assert torch.equal(exported["query_tokens"], query_tokens)
    fresh = Blip2QFormerModel(Blip2QFormerConfig(**HF_SIZES, attn_implementation=attention)).eval()
    fresh.load_state_dict(bare_qformer_state(exported), strict=True)
    with torch.no_grad():
        again = fresh(query_embeds=query_tokens.expand(3, -1, -1), encoder_hidden_states=features,
                      encoder_attention_mask=image_mask).last_hidden_state
    assert torch.equal(again, expected)


def test_instructblip_weights_load_and_give_hf_outputs_with_an_instruction():
    torch.manual_seed(0)
    hf = InstructBlipQFormerModel(InstructBlipQFormerConfig(**HF_SIZES)).eval()
    randomize(hf)
    query_tokens = torch.randn(1, Q, 32)
    ours = QFormer(QFormerConfig.from_hf(hf.config, num_query_tokens=Q)).eval()
    assert ours.config.text_input and not ours.config.stage1_heads
    ours.load_state_dict(from_hf_state_dict(hf_layout(hf, query_tokens), "instructblip"), strict=True)

    features = image_features()
    instruction, instruction_mask = captions()  # rows padded differently
    hf_mask = torch.cat([torch.ones(3, Q, dtype=torch.long), instruction_mask], dim=1)  # as InstructBLIP builds it
    with torch.no_grad():
        expected = hf(input_ids=instruction, attention_mask=hf_mask, query_embeds=query_tokens.expand(3, -1, -1),
                      encoder_hidden_states=features).last_hidden_state
        got = ours(features, text_ids=instruction, text_mask=instruction_mask)
        visual = ours.visual_tokens(features, instruction_ids=instruction, instruction_mask=instruction_mask)
    assert (visual - expected[:, :Q]).abs().max() <= 1e-5
    assert (got[:, Q:] - expected[:, Q:]).abs().max() <= 1e-5
    assert not torch.allclose(visual, ours.visual_tokens(features, instruction_ids=instruction.flip(0),
                                                         instruction_mask=instruction_mask.flip(0)))

    fresh = InstructBlipQFormerModel(InstructBlipQFormerConfig(**HF_SIZES)).eval()
    fresh.load_state_dict(bare_qformer_state(to_hf_state_dict(ours.state_dict(), "instructblip")), strict=True)
    with torch.no_grad():
        again = fresh(input_ids=instruction, attention_mask=hf_mask, query_embeds=query_tokens.expand(3, -1, -1),
                      encoder_hidden_states=features).last_hidden_state
    assert torch.equal(again, expected)


def test_blip2_retrieval_heads_give_hf_itm_and_itc_scores():
    torch.manual_seed(0)
    config = Blip2Config(
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config={**HF_SIZES, "use_qformer_text_input": True},
        text_config=dict(model_type="opt", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         ffn_dim=64, vocab_size=64),
        num_query_tokens=Q, image_text_hidden_size=16,
    )
    hf = Blip2ForImageTextRetrieval(config).eval()
    randomize(hf)
    ours = QFormer(QFormerConfig.from_hf(config.qformer_config, num_query_tokens=Q, stage1_heads=True,
                                         embed_dim=16)).eval()
    missing, unexpected = ours.load_state_dict(from_hf_state_dict(hf.state_dict(), "blip2"), strict=False)
    assert sorted(missing) == sorted(["temp", "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.LayerNorm.weight",
                                      "lm_head.LayerNorm.bias", "lm_head.bias"])  # only LAVIS has these
    assert unexpected == []

    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ids, mask = captions(batch=2)
    with torch.no_grad():
        hf_itm = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
        hf_itc = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask)
        features = hf.vision_model(pixel_values=pixels).last_hidden_state
        itm_logits = ours.itm_head(ours.visual_tokens(features, None, ids, mask)).mean(dim=1)
        image = F.normalize(ours.vision_proj(ours(features)), dim=-1)
        text = F.normalize(ours.text_proj(ours.encode_text(ids, mask)[:, 0]), dim=-1)
        similarity = torch.einsum("iqe,te->itq", image, text).amax(-1)
    assert (itm_logits - hf_itm.logits_per_image).abs().max() <= 1e-5
    assert (similarity - hf_itc.logits_per_image).abs().max() <= 1e-5

    exported = to_hf_state_dict(ours.state_dict(), "blip2")
    assert set(exported) == {k for k in hf.state_dict() if not k.startswith("vision_model.")}


def composite_model(variant: str) -> torch.nn.Module:
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    text = dict(model_type="opt", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
                vocab_size=64)
    if variant == "blip2":
        return Blip2ForConditionalGeneration(Blip2Config(
            vision_config=vision, qformer_config=HF_SIZES, text_config=text, num_query_tokens=Q))
    return InstructBlipForConditionalGeneration(InstructBlipConfig(
        vision_config=vision, qformer_config=HF_SIZES, text_config=text, num_query_tokens=Q))


@pytest.mark.parametrize("variant, text_input", [("blip2", False), ("instructblip", True)])
def test_export_covers_exactly_the_q_former_of_the_generation_model(variant, text_input):
    torch.manual_seed(0)
    hf = composite_model(variant)
    ours = tiny_qformer(text_input=text_input, stage1_heads=False)
    hf_state = hf.state_dict()
    q_former_keys = {k for k in hf_state if k == "query_tokens" or k.startswith("qformer.")}
    exported = to_hf_state_dict(ours.state_dict(), variant)
    assert set(exported) == q_former_keys
    assert all(exported[k].shape == hf_state[k].shape for k in exported)
    reloaded = from_hf_state_dict(hf_state, variant)  # vision_model, language_model, projection left out
    assert set(reloaded) == set(ours.state_dict())


def test_instructblip_export_leaves_out_the_stage1_heads():
    exported = to_hf_state_dict(tiny_qformer().state_dict(), "instructblip")
    assert not any(k.startswith(("vision_proj", "text_proj", "itm_head", "lm_head", "temp")) for k in exported)
    assert "qformer.embeddings.word_embeddings.weight" in exported


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="blip2"):
        to_hf_state_dict({}, "blip3")
