"""Every bundled architecture as a preset: tiny models train on packed batches; published sizes match the papers."""
from __future__ import annotations

import pytest
import torch

import vlm
from vlm.builders import build_model
from vlm.model import count_parameters
from vlm.preset import get_preset

IMAGE, PAD = 5, 0
DECODER_PRESETS = [name for name in vlm.presets() if not get_preset(name).encoder_decoder]


def packed_batch(preset, rows: int = 2, images_per_row: int = 2, seed: int = 0) -> dict:
    """Rows of two samples each: `[text, <image> x visual_tokens, text]`, answers supervised, segment lengths."""
    generator = torch.Generator().manual_seed(seed)
    input_ids, labels, segments = [], [], []
    for _ in range(rows):
        ids, targets, lengths = [], [], []
        for _ in range(images_per_row):
            prompt = torch.randint(10, 200, (3,), generator=generator).tolist()
            answer = torch.randint(10, 200, (4,), generator=generator).tolist()
            sample = prompt[:1] + [IMAGE] * preset.visual_tokens + prompt[1:] + answer
            ids += sample
            targets += [-100] * (len(sample) - len(answer)) + answer
            lengths.append(len(sample))
        input_ids.append(ids)
        labels.append(targets)
        segments.append(lengths)
    pixels = torch.randn(rows * images_per_row, 3, preset.image_size, preset.image_size, generator=generator)
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), "segment_lengths": segments,
            "pixel_values": pixels}


def qformer_inputs(model, batch) -> dict:
    if model.preset.connector != "instruct_qformer":
        return {}
    images = batch["pixel_values"].shape[0]
    return {"qformer_input_ids": torch.randint(1, 100, (images, 6)), "qformer_attention_mask": torch.ones(images, 6, dtype=torch.long)}


def test_ten_architectures_each_at_two_sizes():
    assert vlm.presets() == ["blip2-opt", "blip2-flant5", "instructblip-flant5", "instructblip-vicuna", "qwen-vl",
                             "qwen2-vl", "llava", "llava-1.5", "minigpt4", "minigpt-v2"]
    for name in vlm.presets():
        published, tiny = get_preset(name), get_preset(name, size="tiny")
        assert (published.size, tiny.size, tiny.architecture) == ("published", "tiny", name)
        assert published.chat_format == tiny.chat_format and published.connector == tiny.connector
        assert [s.name for s in published.stages] == [s.name for s in tiny.stages]
        assert all(set(s.trainable) <= set(published.groups) for s in published.stages), name


@pytest.mark.parametrize("name", DECODER_PRESETS)
def test_a_tiny_model_runs_forward_and_backward_on_a_packed_batch(name):
    preset = get_preset(name, size="tiny")
    model = build_model(preset, vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD)
    batch = packed_batch(preset)
    model.set_trainable(preset.groups)
    out = model(**batch, **qformer_inputs(model, batch))
    assert out.logits.shape == (*batch["input_ids"].shape, 256) and torch.isfinite(out.loss)
    assert out.num_tokens == 2 * 2 * 4
    out.loss.backward()
    for group, module in model.groups.items():
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), (name, group)


@pytest.mark.parametrize("name", DECODER_PRESETS)
def test_frozen_groups_receive_no_gradient_in_each_paper_stage(name):
    preset = get_preset(name, size="tiny")
    model = build_model(preset, vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD)
    batch = packed_batch(preset)
    for stage in preset.stages:
        if stage.objective != "lm":
            continue
        model.zero_grad(set_to_none=True)
        model.set_trainable(stage.trainable)
        model(**batch, **qformer_inputs(model, batch)).loss.backward()
        for group, module in model.groups.items():
            learns = group in stage.trainable
            assert all(p.requires_grad == learns for p in module.parameters()), (name, stage.name, group)
            if not learns:
                assert all(p.grad is None for p in module.parameters()), (name, stage.name, group)
            else:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), (name, stage.name, group)


@pytest.mark.parametrize("name", DECODER_PRESETS)
def test_packed_samples_give_the_logits_they_give_alone(name):
    preset = get_preset(name, size="tiny")
    model = build_model(preset, vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD).eval()
    batch = packed_batch(preset, rows=1, images_per_row=2)
    extra = qformer_inputs(model, batch)
    with torch.no_grad():
        packed = model(**batch, **extra).logits[0]
        first = batch["segment_lengths"][0][0]
        alone = []
        for k, (start, end) in enumerate([(0, first), (first, batch["input_ids"].shape[1])]):
            one = {key: value[k:k + 1] for key, value in extra.items()}
            alone.append(model(batch["input_ids"][:, start:end], pixel_values=batch["pixel_values"][k:k + 1], **one).logits[0])
    torch.testing.assert_close(packed, torch.cat(alone), atol=2e-5, rtol=1e-4)


def test_visual_tokens_follow_each_papers_connector():
    tokens = {name: get_preset(name).visual_tokens for name in vlm.presets()}
    assert tokens == {"blip2-opt": 32, "blip2-flant5": 32, "instructblip-flant5": 32, "instructblip-vicuna": 32,
                      "qwen-vl": 256, "qwen2-vl": 256, "llava": 256, "llava-1.5": 576, "minigpt4": 32, "minigpt-v2": 256}
    minigpt_v2 = get_preset("minigpt-v2")
    assert (minigpt_v2.image_size // minigpt_v2.patch_size) ** 2 // 4 == 256  # 1024 patches, 4 concatenated


@pytest.mark.parametrize("name", [n for n in DECODER_PRESETS if n != "llava-1.5"])
def test_published_sizes_build_on_the_meta_device_with_the_papers_widths(name):
    preset = get_preset(name)
    with torch.device("meta"):
        model = build_model(preset, vocab_size=None, image_token_id=1, pad_token_id=0)
    counts = count_parameters(model)
    assert counts["total"] > 1_000_000_000
    assert model.language_model.config.hidden_size == preset.llm["hidden_size"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's flex_attention
@pytest.mark.parametrize("name", DECODER_PRESETS)  # Qwen2-VL too: the kernel is Loom's (vlm.flex), not transformers'
def test_flex_attention_gives_the_packed_logits_sdpa_gives(name):
    preset = get_preset(name, size="tiny")
    model = build_model(preset, vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD).eval()
    batch = packed_batch(preset)
    extra = qformer_inputs(model, batch)
    with torch.no_grad():
        dense = model(**batch, **extra).logits
        model.set_attention("flex_attention")
        flex = model(**batch, **extra).logits
    torch.testing.assert_close(flex, dense, atol=2e-5, rtol=1e-4)


def test_flash_attention_sees_every_packed_segment_as_its_own_sequence():
    from vlm.packed_masks import varlen_kwargs

    document_ids = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]])  # row 0 ends in padding (segment 2)
    kwargs = varlen_kwargs(document_ids)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12] and kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 4


@pytest.mark.skipif(not torch.cuda.is_available() or __import__("importlib").util.find_spec("flash_attn") is None,
                    reason="flash-attn needs a CUDA GPU and the flash_attn package")
@pytest.mark.parametrize("name", ["llava-1.5", "blip2-opt", "qwen-vl"])
def test_flash_attention_2_gives_the_packed_logits_sdpa_gives(name):
    preset = get_preset(name, size="tiny")
    model = build_model(preset, vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD).cuda().to(torch.bfloat16).eval()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in packed_batch(preset).items()}
    with torch.no_grad():
        dense = model(**batch).logits
        model.set_attention("flash_attention_2")
        flash = model(**batch).logits
    torch.testing.assert_close(flash, dense, atol=5e-2, rtol=5e-2)  # bf16 kernels differ in rounding
