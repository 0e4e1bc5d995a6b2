"""The FlanT5 presets as an encoder-decoder VLM (vlm.seq2seq): packed (prompt, answer) samples, stages, HF weights."""
from __future__ import annotations

import pytest
import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, InstructBlipConfig, InstructBlipForConditionalGeneration

from vlm.builders import build_model, from_config_dict
from vlm.model import VisionLanguageModel
from vlm.preset import TINY_EVA, TINY_QFORMER, TINY_T5, get_preset
from vlm.convert import STAGE1_ONLY, from_hf_blip, to_hf_blip
from vlm.seq2seq import EncoderDecoderVLM, decoder_inputs_from_labels

IMAGE, PAD, EOS = 5, 0, 1
PRESETS = ["blip2-flant5", "instructblip-flant5"]
VARIANT = {"blip2-flant5": "blip2", "instructblip-flant5": "instructblip"}


def tiny_model(name: str) -> EncoderDecoderVLM:
    return build_model(get_preset(name, size="tiny"), vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD)


def sample(preset, generator: torch.Generator, prompt_length: int, answer_length: int) -> tuple[list[int], list[int]]:
    """One (encoder, decoder) sample as LAVIS builds it: queries then prompt in; answer + </s> out."""
    prompt = torch.randint(10, 200, (prompt_length,), generator=generator).tolist()
    answer = torch.randint(10, 200, (answer_length,), generator=generator).tolist()
    return [IMAGE] * preset.visual_tokens + prompt, answer + [EOS]


def packed_batch(preset, rows: int = 2, samples_per_row: int = 2, seed: int = 0) -> dict:
    """Rows of packed samples of different lengths; the shorter rows padded (pad id / -100) at the end."""
    generator = torch.Generator().manual_seed(seed)
    encoder_rows, decoder_rows, segments, decoder_segments = [], [], [], []
    for row in range(rows):
        encoder, decoder, lengths, decoder_lengths = [], [], [], []
        for k in range(samples_per_row):
            prompt, answer = sample(preset, generator, prompt_length=3 + row + k, answer_length=2 + (row + k) % 3)
            encoder += prompt
            decoder += answer
            lengths.append(len(prompt))
            decoder_lengths.append(len(answer))
        encoder_rows.append(encoder)
        decoder_rows.append(decoder)
        segments.append(lengths)
        decoder_segments.append(decoder_lengths)
    encoder_width, decoder_width = max(map(len, encoder_rows)), max(map(len, decoder_rows))
    input_ids = torch.tensor([r + [PAD] * (encoder_width - len(r)) for r in encoder_rows])
    labels = torch.tensor([r + [-100] * (decoder_width - len(r)) for r in decoder_rows])
    images = rows * samples_per_row
    batch = {"input_ids": input_ids, "labels": labels, "segment_lengths": segments,
             "decoder_segment_lengths": decoder_segments,
             "pixel_values": torch.randn(images, 3, preset.image_size, preset.image_size, generator=generator)}
    if preset.connector == "instruct_qformer":  # each image's instruction, in the Q-Former's own vocabulary
        batch["qformer_input_ids"] = torch.randint(1, 100, (images, 6), generator=generator)
        batch["qformer_attention_mask"] = torch.ones(images, 6, dtype=torch.long)
    return batch


def alone(batch: dict, row: int, k: int) -> dict:
    """Sample k of packed row `row`, unpacked: its own encoder input, answer and image."""
    start = sum(batch["segment_lengths"][row][:k])
    end = start + batch["segment_lengths"][row][k]
    decoder_start = sum(batch["decoder_segment_lengths"][row][:k])
    decoder_end = decoder_start + batch["decoder_segment_lengths"][row][k]
    image = sum(len(s) for s in batch["segment_lengths"][:row]) + k
    one = {"input_ids": batch["input_ids"][row:row + 1, start:end],
           "labels": batch["labels"][row:row + 1, decoder_start:decoder_end],
           "pixel_values": batch["pixel_values"][image:image + 1]}
    for key in ("qformer_input_ids", "qformer_attention_mask"):
        if key in batch:
            one[key] = batch[key][image:image + 1]
    return one


# --- the class a preset builds -------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_flant5_presets_build_the_encoder_decoder_model_with_laviss_t5(name):
    model = tiny_model(name)
    assert type(model) is EncoderDecoderVLM and isinstance(model, VisionLanguageModel)
    lm = model.language_model
    assert lm.config.dense_act_fn == "gelu"  # LAVIS's t5_config.dense_act_fn, not transformers' gelu_new
    assert not lm.config.scale_decoder_outputs  # FlanT5 (T5 v1.1) does not rescale before lm_head
    # FlanT5 checkpoints hold their own lm_head; the input embedding stays shared by encoder and decoder
    assert lm.lm_head.weight is not lm.shared.weight
    assert lm.encoder.embed_tokens.weight is lm.shared.weight is lm.decoder.embed_tokens.weight


def test_published_flant5_builds_on_the_meta_device_with_flan_t5_xl_widths():
    preset = get_preset("blip2-flant5")
    with torch.device("meta"):
        model = build_model(preset, vocab_size=None, image_token_id=1, pad_token_id=0)
    lm = model.language_model
    assert (lm.config.d_model, lm.config.num_layers, lm.config.num_decoder_layers) == (2048, 24, 24)
    assert model.projection.linear_1.weight.shape == (2048, 768)  # BLIP-2's t5_proj: Q-Former width -> d_model
    # Flan-T5-XL has 2.85B parameters; its own lm_head (32128 x 2048) is part of them
    assert 2.8e9 < sum(p.numel() for p in lm.parameters()) < 2.9e9


def test_config_dict_rebuilds_the_encoder_decoder_model():
    model = tiny_model("blip2-flant5").eval()
    again = from_config_dict(model.config_dict())
    assert type(again) is EncoderDecoderVLM
    again.load_state_dict(model.state_dict(), strict=True)
    batch = packed_batch(model.preset, rows=1)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again.eval()(**batch).logits)


# --- training on packed batches ------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_a_tiny_model_runs_forward_and_backward_on_a_packed_batch(name):
    model = tiny_model(name)
    batch = packed_batch(model.preset)
    model.set_trainable(model.preset.groups)
    out = model(**batch)
    assert out.logits.shape == (*batch["labels"].shape, 256) and torch.isfinite(out.loss)
    assert out.num_tokens == int((batch["labels"] != -100).sum())
    out.loss.backward()
    for group, module in model.groups.items():
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (name, group)


@pytest.mark.parametrize("name", PRESETS)
def test_frozen_groups_receive_no_gradient_in_each_paper_stage(name):
    model = tiny_model(name)
    batch = packed_batch(model.preset)
    stages = [s for s in model.preset.stages if s.objective == "lm"]
    assert stages
    for stage in stages:
        model.zero_grad(set_to_none=True)
        model.set_trainable(stage.trainable)
        model(**batch).loss.backward()
        for group, module in model.groups.items():
            if group in stage.trainable:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), (stage.name, group)
            else:
                assert all(p.grad is None for p in module.parameters()), (stage.name, group)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", PRESETS)
def test_packed_samples_give_the_logits_and_loss_they_give_alone(name, attention):
    model = tiny_model(name).eval()
    model.set_attention(attention)
    batch = packed_batch(model.preset)
    with torch.no_grad():
        packed = model(**batch)
        loss_sum = 0.0
        for row, lengths in enumerate(batch["decoder_segment_lengths"]):
            start = 0
            for k, length in enumerate(lengths):
                one = model(**alone(batch, row, k))
                # logits of this random tiny T5 reach ~45, so fp32 rounding alone is ~1e-5: rtol as in test_vlm_presets
                torch.testing.assert_close(packed.logits[row, start:start + length], one.logits[0], atol=2e-5, rtol=1e-4)
                loss_sum += one.loss.item() * one.num_tokens
                start += length
    assert abs(packed.loss.item() - loss_sum / packed.num_tokens) <= 1e-5


def test_loss_is_summed_over_num_items_in_batch_for_accumulation():
    model = tiny_model("blip2-flant5").eval()
    batch = packed_batch(model.preset)
    with torch.no_grad():
        mean = model(**batch)
        summed = model(**batch, num_items_in_batch=2 * mean.num_tokens)
    torch.testing.assert_close(summed.loss, mean.loss / 2)


def test_a_later_sample_is_blind_to_an_earlier_one_in_the_same_row():
    """Changing sample 0's prompt, image and answer leaves sample 1's logits untouched, bit for bit."""
    model = tiny_model("blip2-flant5").eval()
    batch = packed_batch(model.preset, rows=1)
    changed = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    first, first_answer = batch["segment_lengths"][0][0], batch["decoder_segment_lengths"][0][0]
    changed["input_ids"][0, model.visual_tokens:first] += 1
    changed["labels"][0, :first_answer - 1] += 1
    changed["pixel_values"][0] = torch.randn(changed["pixel_values"][0].shape)
    with torch.no_grad():
        before, after = model(**batch).logits, model(**changed).logits
    assert not torch.allclose(before[0, :first_answer], after[0, :first_answer])
    torch.testing.assert_close(before[0, first_answer:], after[0, first_answer:], atol=1e-5, rtol=0)


def test_decoder_inputs_are_the_labels_shifted_right_within_each_answer():
    labels = torch.tensor([[11, 12, 1, 21, -100, 1, -100]])
    documents = torch.tensor([[0, 0, 0, 1, 1, 1, 2]])
    inputs = decoder_inputs_from_labels(labels, documents, start_token_id=0, pad_token_id=0)
    assert inputs.tolist() == [[0, 11, 12, 0, 21, 0, 0]]  # start token per answer; -100 read as pad


# --- image features in the encoder ---------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_image_features_land_in_the_encoder_input_at_the_placeholders(name):
    model = tiny_model(name).eval()
    batch = packed_batch(model.preset)
    seen = {}
    hook = model.language_model.encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        model(**batch)
        features = model.image_features(batch["pixel_values"], batch.get("qformer_input_ids"),
                                        batch.get("qformer_attention_mask"))  # (N, 8, D)
        text = model.language_model.shared(batch["input_ids"])
    hook.remove()
    is_image = batch["input_ids"] == IMAGE
    assert torch.equal(seen["embeds"][is_image], features.flatten(0, 1))  # row by row, images in order
    assert torch.equal(seen["embeds"][~is_image], text[~is_image])


def test_placeholders_and_images_must_agree():
    model = tiny_model("blip2-flant5")
    batch = packed_batch(model.preset)
    batch["pixel_values"] = batch["pixel_values"][:-1]
    with pytest.raises(ValueError, match="image-token positions"):
        model(**batch)


def test_instructblip_reads_each_images_instruction_and_without_one_its_queries_alone():
    model = tiny_model("instructblip-flant5").eval()
    batch = packed_batch(model.preset)
    with torch.no_grad():
        instructed = model(**batch).logits
        del batch["qformer_input_ids"], batch["qformer_attention_mask"]
        queries_alone = model(**batch).logits  # as in BLIP-2's generative stage, which InstructBLIP runs first
    assert torch.isfinite(queries_alone).all() and not torch.allclose(instructed, queries_alone)


# --- refusals with the fix in the message --------------------------------------------------------

def test_packed_encoder_rows_need_their_decoder_segments():
    model = tiny_model("blip2-flant5")
    batch = packed_batch(model.preset)
    del batch["decoder_segment_lengths"]
    with pytest.raises(ValueError, match="decoder_segment_lengths"):
        model(**batch)
    batch["decoder_segment_lengths"] = [[sum(row)] for row in packed_batch(model.preset)["decoder_segment_lengths"]]
    with pytest.raises(ValueError, match="samples per row"):
        model(**batch)


@pytest.mark.parametrize("mode", ["segment_sdpa", "flex_attention"])
def test_attention_modes_without_t5s_position_bias_are_refused(mode):
    model = tiny_model("blip2-flant5")
    with pytest.raises(ValueError, match="relative position bias"):
        model.set_attention(mode)
    assert model.attn_implementation == "sdpa"


# --- transformers' BLIP-2 / InstructBLIP with a T5 text model ------------------------------------

def hf_model(name: str) -> torch.nn.Module:
    """transformers' model of the same shapes as the tiny preset (T5 with LAVIS's exact GELU)."""
    qformer = {k: v for k, v in TINY_QFORMER.items() if k not in ("num_query_tokens", "embed_dim")}
    sizes = dict(vision_config=TINY_EVA, qformer_config=qformer, text_config=dict(TINY_T5, model_type="t5", dense_act_fn="gelu"),
                 num_query_tokens=TINY_QFORMER["num_query_tokens"], image_token_index=IMAGE)
    if name == "blip2-flant5":
        return Blip2ForConditionalGeneration(Blip2Config(**sizes)).eval()
    return InstructBlipForConditionalGeneration(InstructBlipConfig(**sizes)).eval()


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight random (norms and biases too), so a misplaced tensor cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1 + (parameter.dim() == 1))


def hf_batch(preset, seed: int = 0) -> dict:
    """Two unpacked samples padded as LAVIS pads them: encoder padding masked, answer padding -100."""
    generator = torch.Generator().manual_seed(seed)
    first, second = sample(preset, generator, 5, 4), sample(preset, generator, 3, 2)
    input_ids = torch.tensor([first[0], second[0] + [PAD] * 2])
    attention_mask = torch.tensor([[1] * len(first[0]), [1] * len(second[0]) + [0] * 2])
    labels = torch.tensor([first[1], second[1] + [-100] * 2])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "pixel_values": torch.randn(2, 3, preset.image_size, preset.image_size, generator=generator)}
    if preset.connector == "instruct_qformer":
        batch["qformer_input_ids"] = torch.randint(1, 100, (2, 6), generator=generator)
        batch["qformer_attention_mask"] = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    return batch


@pytest.mark.parametrize("name", PRESETS)
def test_weights_from_transformers_give_its_logits_and_export_back(name):
    torch.manual_seed(0)
    hf = hf_model(name)
    randomize(hf)
    ours = tiny_model(name).eval()
    variant = VARIANT[name]
    missing, unexpected = ours.load_state_dict(from_hf_blip(hf.state_dict(), variant), strict=False)
    assert unexpected == []
    # transformers' generation checkpoints hold no stage-1 heads (BLIP-2's no Q-Former text path either)
    assert missing and all(k.startswith("connector.") and STAGE1_ONLY.match(k[len("connector."):]) for k in missing)

    batch = hf_batch(ours.preset)
    with torch.no_grad():
        expected = hf(**batch)
        got = ours(**batch)
    assert (got.logits - expected.logits).abs().max() <= 1e-4
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5

    exported = to_hf_blip(ours.state_dict(), variant)
    assert set(exported) == set(hf.state_dict())
    fresh = hf_model(name)
    fresh.load_state_dict(exported, strict=True)
    with torch.no_grad():
        again = fresh(**batch)
    assert torch.equal(again.logits, expected.logits)


@pytest.mark.parametrize("name", PRESETS)
def test_an_official_checkpoint_folder_loads_decodes_as_transformers_does_and_saves_back(name, tmp_path):
    import vlm
    from vlm.generate import generate

    torch.manual_seed(0)
    hf = hf_model(name)
    randomize(hf, seed=3)
    hf.save_pretrained(tmp_path / "official")
    model = vlm.from_pretrained(tmp_path / "official").eval()
    assert isinstance(model, EncoderDecoderVLM) and model.preset.architecture == name
    batch = hf_batch(model.preset)
    with torch.no_grad():
        assert (model(**batch).logits - hf(**batch).logits).abs().max() <= 1e-4

    prompts = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    extra = {k: batch[k] for k in ("qformer_input_ids", "qformer_attention_mask") if k in batch}
    for beams in (1, 3):
        ours = generate(model, prompts, batch["pixel_values"], EOS, PAD, max_new_tokens=5, num_beams=beams, **extra)
        with torch.no_grad():
            theirs = hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 pixel_values=batch["pixel_values"], max_new_tokens=5, num_beams=beams, do_sample=False,
                                 eos_token_id=EOS, pad_token_id=PAD, bad_words_ids=[[IMAGE]], **extra)
        expected = [r[1:r.index(EOS)] if EOS in r else [t for t in r[1:] if t != PAD] for r in theirs.tolist()]
        assert ours == expected, beams

    model.save_pretrained(tmp_path / "exported", format="hf")
    again = type(hf).from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, hf(**batch).logits)
