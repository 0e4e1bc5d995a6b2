"""Generation: greedy and beam search give what transformers' own official models give on the same weights."""
from __future__ import annotations

import pytest
import torch

import vlm
from vlm.generate import generate

from test_vlm_checkpoints import IMAGE, OFFICIAL, inputs

EOS, PAD = 2, 0


@pytest.fixture(scope="module", params=sorted(OFFICIAL))
def pair(request, tmp_path_factory):
    """(transformers' official model, the same weights loaded into Loom, a batch of two prompts)."""
    torch.manual_seed(1)
    hf_model, visual_tokens = OFFICIAL[request.param]()
    folder = tmp_path_factory.mktemp(request.param)
    hf_model.eval().save_pretrained(folder)
    return hf_model, vlm.from_pretrained(folder).eval(), inputs(visual_tokens, seed=3)


def official(hf_model, batch, **settings) -> list[list[int]]:
    extra = {k: batch[k] for k in ("qformer_input_ids", "qformer_attention_mask")} if "InstructBlip" in type(hf_model).__name__ else {}
    with torch.no_grad():
        out = hf_model.generate(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                                attention_mask=torch.ones_like(batch["input_ids"]), max_new_tokens=6, do_sample=False,
                                eos_token_id=EOS, pad_token_id=PAD, bad_words_ids=[[IMAGE]], **extra, **settings)
    length = batch["input_ids"].shape[1]
    rows = out[:, length:] if out.shape[1] > 6 else out  # decoder-only models return the prompt too
    return [r[:r.index(EOS)] if EOS in r else [t for t in r if t != PAD] for r in rows.tolist()]


def loom(model, batch, **settings) -> list[list[int]]:
    extra = ({k: batch[k] for k in ("qformer_input_ids", "qformer_attention_mask")}
             if model.preset.connector == "instruct_qformer" else {})
    return generate(model, batch["input_ids"].tolist(), batch["pixel_values"], EOS, PAD, max_new_tokens=6, **settings, **extra)


def test_greedy_decoding_matches_the_official_model(pair):
    hf_model, model, batch = pair
    assert loom(model, batch) == official(hf_model, batch)


def test_beam_search_matches_the_official_model(pair):
    hf_model, model, batch = pair
    beams = loom(model, batch, num_beams=3)
    assert beams == official(hf_model, batch, num_beams=3)
    assert all(len(row) > 0 for row in beams)


def test_a_left_padded_batch_decodes_each_prompt_as_it_decodes_alone(pair):
    _, model, batch = pair
    prompts = batch["input_ids"].tolist()
    prompts[1] = prompts[1][2:]  # a shorter prompt, padded on the left in the batch
    extra = ({k: batch[k] for k in ("qformer_input_ids", "qformer_attention_mask")}
             if model.preset.connector == "instruct_qformer" else {})
    for beams in (1, 3):
        together = generate(model, prompts, batch["pixel_values"], EOS, PAD, max_new_tokens=5, num_beams=beams, **extra)
        alone = [generate(model, [p], batch["pixel_values"][k:k + 1], EOS, PAD, max_new_tokens=5, num_beams=beams,
                          **{key: value[k:k + 1] for key, value in extra.items()})[0] for k, p in enumerate(prompts)]
        assert together == alone, beams
