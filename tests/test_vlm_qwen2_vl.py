"""Qwen2-VL as a Loom preset: native-resolution patches, the 2x2 merger as connector, M-RoPE in packed rows,
and the same logits as transformers' Qwen2VLForConditionalGeneration with the same weights."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlm.builders import build_model, from_config_dict
from vlm.convert import from_hf_qwen2_vl_state_dict, to_hf_qwen2_vl_state_dict
from vlm.model import count_parameters
from vlm.packed_masks import positions_from_document_ids
from vlm.preset import get_preset
from vlm.qwen2_vl import Qwen2VLM, mrope_position_ids, patchify

IMAGE, PAD = 5, 0
PRESET = get_preset("qwen2-vl", size="tiny")  # patch 8, merge 2: sides are multiples of 16 pixels


def tokens_for(image: torch.Tensor) -> int:
    """Placeholders of one (3, H, W) image: one per 2x2 block of 8-pixel patches."""
    return (image.shape[1] // 16) * (image.shape[2] // 16)


def make_sample(generator: torch.Generator, sizes: list[tuple[int, int]]) -> dict:
    """`text, <image> x tokens, text, ...` with one image per size and a supervised 3-token answer."""
    ids, images = torch.randint(10, 200, (2,), generator=generator).tolist(), []
    for height, width in sizes:
        image = torch.randn(3, height, width, generator=generator)
        images.append(image)
        ids += [IMAGE] * tokens_for(image) + torch.randint(10, 200, (2,), generator=generator).tolist()
    answer = torch.randint(10, 200, (3,), generator=generator).tolist()
    labels = [-100] * len(ids) + answer
    return {"input_ids": ids + answer, "labels": labels, "images": images}


# Two samples whose images differ in size and aspect: 4x6, 4x4 and 6x4 patches (6, 4 and 6 visual tokens).
SIZES = [[(32, 48)], [(32, 32), (48, 32)]]


def samples(seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [make_sample(generator, sizes) for sizes in SIZES]


def packed(rows: list[list[dict]]) -> dict:
    """Rows of packed samples, right-padded with PAD as a segment of its own; images in order of appearance."""
    length = max(sum(len(s["input_ids"]) for s in row) for row in rows)
    input_ids = torch.full((len(rows), length), PAD)
    labels = torch.full((len(rows), length), -100)
    segments, images = [], []
    for b, row in enumerate(rows):
        ids = [t for s in row for t in s["input_ids"]]
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, :len(ids)] = torch.tensor([t for s in row for t in s["labels"]])
        segments.append([len(s["input_ids"]) for s in row])
        images += [image for s in row for image in s["images"]]
    pixel_values, image_grid_thw = patchify(images, patch_size=8, merge_size=2, temporal_patch_size=2)
    return {"input_ids": input_ids, "labels": labels, "segment_lengths": segments, "pixel_values": pixel_values,
            "image_grid_thw": image_grid_thw}


def tiny_model(attn: str = "sdpa", seed: int = 0) -> Qwen2VLM:
    return build_model(PRESET, vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD, attn_implementation=attn,
                       seed=seed)


def hf_model(seed: int = 0, tie_word_embeddings: bool = False):
    """transformers' Qwen2VLForConditionalGeneration with the tiny preset's shapes; with tie_word_embeddings
    its LM head is the input embeddings, as in Qwen2-VL-2B."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = {k: v for k, v in PRESET.llm.items() if k != "tie_word_embeddings"}  # transformers reads the outer one
    config = Qwen2VLConfig(
        text_config=dict(text, pad_token_id=PAD, bos_token_id=1, eos_token_id=2),
        vision_config=dict(PRESET.vision), image_token_id=IMAGE, video_token_id=6, vision_start_token_id=7,
        vision_end_token_id=8, tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config).eval()


def hf_inputs(batch: dict) -> dict:
    """The same batch as transformers reads it: one sample per row, a padding mask, modality ids for M-RoPE."""
    input_ids = batch["input_ids"]
    attention_mask = torch.zeros_like(input_ids)
    for b, lengths in enumerate(batch["segment_lengths"]):
        assert len(lengths) == 1, "transformers' Qwen2-VL runs one sample per row"
        attention_mask[b, :lengths[0]] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": batch["pixel_values"],
            "image_grid_thw": batch["image_grid_thw"], "mm_token_type_ids": (input_ids == IMAGE).int(),
            "use_cache": False}


# ---------------------------------------------------------------------------------------------
# Images and positions
# ---------------------------------------------------------------------------------------------

def test_patchify_lays_patches_out_as_the_qwen2vl_image_processor_does():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    images = [torch.rand(3, 32, 48), torch.rand(3, 48, 32), torch.rand(3, 32, 32)]
    processor = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2)
    expected = processor(images=[i.numpy() for i in images], do_resize=False, do_rescale=False, do_normalize=False,
                         input_data_format="channels_first", return_tensors="pt")
    pixel_values, grid = patchify(images, patch_size=8, merge_size=2, temporal_patch_size=2)
    assert pixel_values.shape == (24 + 24 + 16, 3 * 2 * 8 * 8)
    assert grid.tolist() == [[1, 4, 6], [1, 6, 4], [1, 4, 4]]
    assert torch.equal(pixel_values, expected["pixel_values"]) and torch.equal(grid, expected["image_grid_thw"])
    with pytest.raises(ValueError, match="multiples of patch_size \\* merge_size = 16"):
        patchify(torch.rand(1, 3, 40, 32), patch_size=8, merge_size=2)


def test_mrope_ids_equal_transformers_get_rope_index_on_one_sample():
    sample = samples()[1]  # two images, 4x4 then 6x4 patches
    batch = packed([[sample]])
    ours, deltas = mrope_position_ids(batch["input_ids"], batch["image_grid_thw"], IMAGE, merge_size=2)
    hf = hf_model()
    theirs, hf_deltas = hf.model.get_rope_index(batch["input_ids"], mm_token_type_ids=(batch["input_ids"] == IMAGE).int(),
                                                image_grid_thw=batch["image_grid_thw"])
    assert torch.equal(ours, theirs) and torch.equal(deltas, hf_deltas.flatten())
    # Text, then the 2x2-token image at the next id: temporal fixed, height and width its grid, text from max + 1.
    assert ours[:, 0, :8].tolist() == [[0, 1, 2, 2, 2, 2, 4, 5], [0, 1, 2, 2, 3, 3, 4, 5], [0, 1, 2, 3, 2, 3, 4, 5]]


def test_mrope_ids_restart_in_each_packed_sample():
    first, second = samples()
    batch = packed([[first, second]])
    document_ids = torch.repeat_interleave(torch.tensor([0, 1]), torch.tensor(batch["segment_lengths"][0]))[None]
    together, _ = mrope_position_ids(batch["input_ids"], batch["image_grid_thw"], IMAGE, 2, document_ids)
    alone = [mrope_position_ids(packed([[s]])["input_ids"], packed([[s]])["image_grid_thw"], IMAGE, 2)[0]
             for s in (first, second)]
    assert torch.equal(together, torch.cat(alone, dim=2))


def test_placeholders_must_match_the_images_grids():
    model = tiny_model()
    batch = packed([[samples()[0]]])
    ids = batch["input_ids"]
    short = torch.cat([ids[:, :2], ids[:, 3:]], dim=1)  # 5 placeholders for the 4x6-patch image's 6 tokens
    with pytest.raises(ValueError, match="image-token positions"):
        model(short, batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])


# ---------------------------------------------------------------------------------------------
# Training on packed rows
# ---------------------------------------------------------------------------------------------

def test_groups_are_disjoint_and_hold_every_parameter_once():
    model = tiny_model()
    assert list(model.groups) == ["vision", "connector", "llm"] == list(PRESET.groups)
    assert model.connector is not None and not hasattr(model.vision_tower.merger, "mlp")  # the merger lives once
    seen = [id(p) for module in model.groups.values() for p in module.parameters()]
    assert len(seen) == len(set(seen)) and set(seen) == {id(p) for p in model.parameters()}
    assert count_parameters(model)["total"] == sum(p.numel() for p in model.parameters())


def test_a_tiny_model_runs_forward_and_backward_on_a_packed_batch_of_two_image_sizes():
    model = tiny_model()
    batch = packed([samples(0), samples(1)])
    model.set_trainable(PRESET.groups)
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, 256) and torch.isfinite(out.loss)
    assert out.num_tokens == 2 * 2 * 3
    out.loss.backward()
    for group, module in model.groups.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), group


def test_frozen_groups_receive_no_gradient_in_each_paper_stage():
    model = tiny_model()
    batch = packed([samples(0), samples(1)])
    assert [s.name for s in PRESET.stages] == ["vision", "all", "instruct"]
    for stage in PRESET.stages:
        model.zero_grad(set_to_none=True)
        model.set_trainable(stage.trainable)
        model(**batch).loss.backward()
        for group, module in model.groups.items():
            learns = group in stage.trainable
            assert all(p.requires_grad == learns for p in module.parameters()), (stage.name, group)
            if learns:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), (stage.name, group)
            else:
                assert all(p.grad is None for p in module.parameters()), (stage.name, group)


def test_the_instruct_stage_fine_tunes_the_llm_alone_with_the_vit_and_its_merger_locked():
    """arXiv 2409.12191 section 2.2: stage 1 trains the ViT, stage 3 "lock[s] the ViT parameters and perform[s]
    exclusive fine-tuning of the LLM". The 2x2 merger (the connector slot) is part of the ViT in both."""
    for preset in (PRESET, get_preset("qwen2-vl")):
        assert preset.stage("vision").trainable == ("vision", "connector")
        assert preset.stage("instruct").trainable == ("llm",)
    model = tiny_model()
    model.set_trainable(PRESET.stage("instruct").trainable)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-2)
    model(**packed([samples(0), samples(1)])).loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("language_model.") for name in changed)  # ViT and merger bit-identical


@pytest.mark.parametrize("attn", ["sdpa", "eager", "segment_sdpa"])
def test_packed_samples_give_the_logits_they_give_alone(attn):
    model = tiny_model(attn).eval()
    first, second = samples()
    with torch.no_grad():
        together = model(**packed([[first, second]])).logits[0]
        alone = [model(**packed([[s]])).logits[0] for s in (first, second)]
    torch.testing.assert_close(together, torch.cat(alone), atol=2e-5, rtol=0)


def test_images_of_the_preset_size_are_patchified_by_the_model():
    """The packed-data path: (N, 3, H, W) images at the preset's size and 1-D positions restarting per sample."""
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(3)
    rows = [[make_sample(generator, [(32, 32)]), make_sample(generator, [(32, 32)])]]
    batch = packed(rows)
    images = torch.stack([s["images"][0] for s in rows[0]])  # (2, 3, 32, 32)
    assert PRESET.visual_tokens == tokens_for(images[0]) == 4
    document_ids = torch.repeat_interleave(torch.tensor([0, 1]), torch.tensor(batch["segment_lengths"][0]))[None]
    with torch.no_grad():
        from_patches = model(**batch).logits
        from_images = model(batch["input_ids"], images, position_ids=positions_from_document_ids(document_ids),
                            document_ids=document_ids).logits
    assert torch.equal(from_patches, from_images)


def test_a_checkpoint_rebuilds_the_same_model(tmp_path):
    model = tiny_model().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    rebuilt = from_config_dict(model.config_dict())
    assert type(rebuilt) is Qwen2VLM
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    batch = packed([samples()])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, rebuilt.eval()(**batch).logits)


def test_cached_decoding_continues_the_mrope_ids():
    from transformers import DynamicCache

    model = tiny_model().eval()
    sample = samples()[1]
    batch = packed([[sample]])
    prompt = {k: v for k, v in batch.items() if k not in ("labels", "segment_lengths")}
    prompt["input_ids"] = batch["input_ids"][:, :-1]
    with torch.no_grad():
        full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, -1]
        cache = DynamicCache(config=model.language_model.config)
        prefill = model(**prompt, cache=cache)
        length = prompt["input_ids"].shape[1]
        step = model(batch["input_ids"][:, -1:], position_ids=torch.tensor([[length]]), cache=prefill.cache).logits[0, -1]
    # Its images take 4 + 6 placeholders but only max(h, w) = 2 + 3 ids: the next id is 5 below its 1-D position.
    assert model.rope_deltas.tolist() == [-5]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


def test_greedy_answers_are_the_same_with_and_without_a_kv_cache():
    """Loom's evaluation loop: left-padded prompts with one preset-size image each, decoded greedily."""
    from vlm.generate import generate as generate_greedy

    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(5)
    first, second = make_sample(generator, [(32, 32)]), make_sample(generator, [(32, 32)])
    prompts = [first["input_ids"][:-3], second["input_ids"][:-1]]  # different lengths: the first is padded
    images = torch.stack([first["images"][0], second["images"][0]])
    cached = generate_greedy(model, prompts, images, eos_token_id=2, pad_token_id=PAD, max_new_tokens=6)
    recomputed = generate_greedy(model, prompts, images, eos_token_id=2, pad_token_id=PAD, max_new_tokens=6,
                                 use_cache=False)
    assert cached == recomputed and all(len(answer) == 6 for answer in cached)


def test_the_published_size_has_the_papers_675m_vit_and_7_6b_llm():
    with torch.device("meta"):
        model = build_model(get_preset("qwen2-vl"), vocab_size=None, image_token_id=151655, pad_token_id=0)
    counts = count_parameters(model)
    # arXiv 2409.12191, Table 1: a 675M vision encoder (its merger included) and a 7.6B LLM
    assert int((counts["vision"] + counts["connector"]) / 1e6) == 675
    assert round(counts["llm"] / 1e9, 1) == 7.6


def test_mrope_sections_must_split_the_rotary_frequencies():
    import dataclasses

    bad = dataclasses.replace(PRESET, llm=dict(PRESET.llm, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 2]}))
    with pytest.raises(ValueError, match="must sum to head_dim / 2 = 8"):
        build_model(bad, vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD)


# ---------------------------------------------------------------------------------------------
# Equivalence with transformers' Qwen2VLForConditionalGeneration
# ---------------------------------------------------------------------------------------------

def loom_from(hf) -> Qwen2VLM:
    model = tiny_model(seed=1).eval()
    model.load_state_dict(from_hf_qwen2_vl_state_dict(hf.state_dict()), strict=True)
    return model


def real_logits(logits: torch.Tensor, batch: dict) -> list[torch.Tensor]:
    return [logits[b, :lengths[0]] for b, lengths in enumerate(batch["segment_lengths"])]


@pytest.mark.parametrize("attn", ["sdpa", "eager", "segment_sdpa"])
@pytest.mark.parametrize("rows", [1, 2], ids=["one_sample", "batch_of_two"])
def test_logits_equal_transformers_qwen2vl_with_the_same_weights(rows, attn):
    hf = hf_model()
    model = loom_from(hf)
    model.set_attention(attn)
    batch = packed([[s] for s in samples()[-rows:]])  # rows of different lengths: the shorter one is padded
    with torch.no_grad():
        theirs = hf(**hf_inputs(batch)).logits
        ours = model(**batch).logits
    differences = [(a - b).abs().max().item() for a, b in zip(real_logits(ours, batch), real_logits(theirs, batch))]
    print(f"max abs logit difference per sample vs transformers: {differences}")
    assert max(differences) <= 1e-4


def test_exported_weights_give_a_fresh_transformers_model_the_same_logits():
    hf = hf_model()
    model = loom_from(hf)
    fresh = hf_model(seed=7)
    fresh.load_state_dict(to_hf_qwen2_vl_state_dict(model.state_dict()), strict=True)
    batch = packed([[s] for s in samples()])
    with torch.no_grad():
        assert torch.equal(fresh(**hf_inputs(batch)).logits, hf(**hf_inputs(batch)).logits)
    # The Hub checkpoints' older names (visual.*, model.*) read back to the same weights.
    hub = to_hf_qwen2_vl_state_dict(model.state_dict(), layout="checkpoint")
    assert "visual.merger.mlp.0.weight" in hub and "model.layers.0.self_attn.q_proj.weight" in hub
    back = from_hf_qwen2_vl_state_dict(hub)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_an_official_checkpoint_folder_loads_through_from_pretrained_and_saves_back(tmp_path):
    import vlm
    from transformers import Qwen2VLForConditionalGeneration

    hf = hf_model()
    hf.save_pretrained(tmp_path / "official")
    model = vlm.from_pretrained(tmp_path / "official").eval()
    assert isinstance(model, Qwen2VLM) and model.preset.architecture == "qwen2-vl"
    batch = packed([[s] for s in samples()[-2:]])
    with torch.no_grad():
        theirs = hf(**hf_inputs(batch)).logits
        ours = model(**batch).logits
    assert max((a - b).abs().max().item() for a, b in zip(real_logits(ours, batch), real_logits(theirs, batch))) <= 1e-4
    model.save_pretrained(tmp_path / "exported", format="hf")
    again = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        assert torch.equal(again(**hf_inputs(batch)).logits, theirs)


@pytest.mark.parametrize("tied", [True, False], ids=["tied_like_2b", "untied_like_7b"])
def test_a_checkpoint_with_or_without_tied_embeddings_loads_saves_and_exports_with_the_same_logits(tied, tmp_path):
    """Qwen2-VL-2B ties its LM head to the input embeddings (7B does not): Loom keeps the tie, one parameter
    as in transformers, through its own format and back out to transformers' with tie_word_embeddings."""
    import json

    import vlm
    from safetensors import safe_open
    from transformers import Qwen2VLForConditionalGeneration

    hf = hf_model(tie_word_embeddings=tied)
    hf.save_pretrained(tmp_path / "official")
    batch = packed([[s] for s in samples()])
    with torch.no_grad():
        theirs = hf(**hf_inputs(batch)).logits

    model = vlm.from_pretrained(tmp_path / "official").eval()
    lm = model.language_model
    assert (lm.lm_head.weight is lm.get_input_embeddings().weight) == tied
    assert (lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()) == tied  # no storage shared untied
    assert count_parameters(model)["total"] == sum(p.numel() for p in hf.parameters())
    with torch.no_grad():
        ours = model(**batch).logits
    assert max((a - b).abs().max().item() for a, b in zip(real_logits(ours, batch), real_logits(theirs, batch))) <= 1e-5

    model.save_pretrained(tmp_path / "loom")
    with safe_open(tmp_path / "loom" / "model.safetensors", "pt") as weights:
        assert ("language_model.lm_head.weight" in weights.keys()) != tied  # a tied head is written once
    again = vlm.from_pretrained(tmp_path / "loom").eval()
    assert (again.language_model.lm_head.weight is again.language_model.get_input_embeddings().weight) == tied
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, ours)

    model.save_pretrained(tmp_path / "exported", format="hf")
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["tie_word_embeddings"] == tied
    exported = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**hf_inputs(batch)).logits, theirs, atol=1e-5, rtol=0)


def test_beam_search_and_greedy_decode_as_transformers_does_on_the_same_weights():
    from vlm.generate import generate

    hf = hf_model()
    model = loom_from(hf)
    batch = packed([[s] for s in samples()[-2:]])
    prompts = [row[:lengths[0] - 3].tolist() for row, lengths in zip(batch["input_ids"], batch["segment_lengths"])]
    for beams in (1, 3):
        ours = generate(model, prompts, batch["pixel_values"], 2, PAD, max_new_tokens=5, num_beams=beams,
                        image_grid_thw=batch["image_grid_thw"])
        theirs = []
        counts = [len(s["images"]) for s in samples()[-2:]]
        for k, prompt in enumerate(prompts):  # one prompt at a time: transformers' own batch layout is not Loom's
            ids = torch.tensor([prompt])
            first = sum(counts[:k])
            grid = batch["image_grid_thw"][first:first + counts[k]]
            start = int(batch["image_grid_thw"][:first].prod(-1).sum())
            patches = batch["pixel_values"][start:start + int(grid.prod(-1).sum())]
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=patches,
                                  image_grid_thw=grid, mm_token_type_ids=(ids == IMAGE).int(), max_new_tokens=5,
                                  num_beams=beams, do_sample=False, eos_token_id=2, pad_token_id=PAD,
                                  bad_words_ids=[[IMAGE]])[0, len(prompt):].tolist()
            theirs.append(out[:out.index(2)] if 2 in out else [t for t in out if t != PAD])
        assert ours == theirs, beams
    assert isinstance(model.vision_tower.merger, torch.nn.Identity)  # the view gave the merger back
