"""Checkpoints in and out: official transformers checkpoints load into Loom with the same logits, and
Loom's models export back to them; Loom's own format round-trips."""
from __future__ import annotations

import pytest
import torch
import transformers

import vlm
from vlm.preset import TINY_CLIP, TINY_EVA, TINY_LLAMA, TINY_OPT, TINY_QFORMER, get_preset

IMAGE = 5
QFORMER = {k: TINY_QFORMER[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                         "cross_attention_frequency", "encoder_hidden_size", "vocab_size")}


def tiny_llava():
    text = transformers.LlamaConfig(**TINY_LLAMA, pad_token_id=0).to_dict()
    config = transformers.LlavaConfig(vision_config=transformers.CLIPVisionConfig(**TINY_CLIP).to_dict(),
                                      text_config=text, image_token_id=IMAGE)
    return transformers.LlavaForConditionalGeneration(config), (TINY_CLIP["image_size"] // TINY_CLIP["patch_size"]) ** 2


def tiny_blip2_opt():
    text = transformers.OPTConfig(**TINY_OPT, pad_token_id=1).to_dict()
    config = transformers.Blip2Config(vision_config=TINY_EVA, qformer_config=QFORMER, text_config=text,
                                      num_query_tokens=TINY_QFORMER["num_query_tokens"], image_token_id=IMAGE)
    return transformers.Blip2ForConditionalGeneration(config), TINY_QFORMER["num_query_tokens"]


def tiny_instructblip_vicuna():
    text = transformers.LlamaConfig(**TINY_LLAMA, pad_token_id=0).to_dict()
    config = transformers.InstructBlipConfig(vision_config=TINY_EVA, qformer_config=QFORMER, text_config=text,
                                             num_query_tokens=TINY_QFORMER["num_query_tokens"], image_token_id=IMAGE)
    return transformers.InstructBlipForConditionalGeneration(config), TINY_QFORMER["num_query_tokens"]


OFFICIAL = {"llava-1.5": tiny_llava, "blip2-opt": tiny_blip2_opt, "instructblip-vicuna": tiny_instructblip_vicuna}


def inputs(visual_tokens: int, image_size: int = 32, seed: int = 0) -> dict:
    """Two prompts, each with one image expanded to its visual tokens, as the official processors lay them out."""
    generator = torch.Generator().manual_seed(seed)
    rows = [[7, 8] + [IMAGE] * visual_tokens + torch.randint(10, 200, (6,), generator=generator).tolist() for _ in range(2)]
    batch = {"input_ids": torch.tensor(rows), "pixel_values": torch.randn(2, 3, image_size, image_size, generator=generator)}
    batch["qformer_input_ids"] = torch.randint(1, 100, (2, 5), generator=generator)
    batch["qformer_attention_mask"] = torch.ones(2, 5, dtype=torch.long)
    return batch


def hf_logits(hf_model, batch) -> torch.Tensor:
    extra = {k: batch[k] for k in ("qformer_input_ids", "qformer_attention_mask")} if "InstructBlip" in type(hf_model).__name__ else {}
    with torch.no_grad():
        return hf_model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                        attention_mask=torch.ones_like(batch["input_ids"]), **extra).logits.float()


def loom_logits(model, batch) -> torch.Tensor:
    extra = {k: batch[k] for k in ("qformer_input_ids", "qformer_attention_mask")} if model.preset.connector == "instruct_qformer" else {}
    with torch.no_grad():
        return model(batch["input_ids"], pixel_values=batch["pixel_values"],
                     document_ids=torch.arange(2)[:, None].expand_as(batch["input_ids"]) * 0, **extra).logits


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_an_official_checkpoint_loads_with_the_same_logits_and_exports_back(name, tmp_path):
    torch.manual_seed(0)
    hf_model, visual_tokens = OFFICIAL[name]()
    hf_model.eval().save_pretrained(tmp_path / "official")
    batch = inputs(visual_tokens)
    expected = hf_logits(hf_model, batch)

    model = vlm.from_pretrained(tmp_path / "official").eval()
    assert model.preset.architecture == name and model.visual_tokens == visual_tokens
    loaded = loom_logits(model, batch)
    assert (loaded - expected).abs().max().item() <= 1e-4

    model.save_pretrained(tmp_path / "exported", format="hf")
    hf_class = type(hf_model)
    again = hf_class.from_pretrained(tmp_path / "exported").eval()
    assert torch.equal(hf_logits(again, batch), expected)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_loom_format_round_trips_and_records_where_it_came_from(name, tmp_path):
    model = vlm.build(name, size="tiny", vocab_size=256, image_token_id=IMAGE).eval()
    model.save_pretrained(tmp_path / "loom")
    again = vlm.from_pretrained(tmp_path / "loom").eval()
    batch = inputs(model.visual_tokens, model.preset.image_size)
    assert torch.equal(loom_logits(again, batch), loom_logits(model, batch))
    assert again.preset == model.preset


def test_a_tied_lm_head_is_written_once_and_stays_tied(tmp_path):
    model = vlm.build("blip2-opt", size="tiny", vocab_size=256, image_token_id=IMAGE)  # OPT ties its head
    model.save_pretrained(tmp_path / "loom")
    from safetensors import safe_open

    with safe_open(tmp_path / "loom" / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "language_model.model.decoder.embed_tokens.weight" in names and "language_model.lm_head.weight" not in names
    again = vlm.from_pretrained(tmp_path / "loom")
    assert again.language_model.lm_head.weight.data_ptr() == again.language_model.model.decoder.embed_tokens.weight.data_ptr()


def test_an_architecture_transformers_lacks_cannot_export_as_hf(tmp_path):
    model = vlm.build("minigpt-v2", size="tiny", vocab_size=256, image_token_id=IMAGE)
    with pytest.raises(ValueError, match="minigpt-v2: transformers has no class for this architecture; save it with format='loom'"):
        model.save_pretrained(tmp_path / "x", format="hf")


def test_an_unknown_checkpoint_names_what_loom_loads(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "idefics"}')
    with pytest.raises(ValueError, match="a 'idefics' checkpoint: Loom loads blip-2, instructblip, llava"):
        vlm.from_pretrained(tmp_path)
    assert get_preset("llava-1.5").visual_tokens == 576
