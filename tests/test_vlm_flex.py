"""Flex attention on packed rows whose length changes every batch (vlm.flex): lengths are padded to
power-of-two buckets, each bucket compiled once with static shapes, the logits those of sdpa.

No test here clears torch's compiler state: a training run never does either."""
from __future__ import annotations

import pytest
import torch

from vlm.flex import bucket_length
from vlm.builders import build_model
from vlm.packed_masks import build_attention_mask
from vlm.preset import get_preset

IMAGE, PAD = 5, 0
PRESET = get_preset("llava-1.5", size="tiny")  # 64 visual tokens per image


def packed_rows(lengths: list[list[int]], seed: int) -> dict:
    """Rows of packed samples `[text, <image> x 64, text, answer]` of the given lengths, padded with a
    segment of their own to the longest row, one image per sample."""
    generator = torch.Generator().manual_seed(seed)
    width = max(sum(row) for row in lengths)
    input_ids = torch.full((len(lengths), width), PAD)
    for b, row in enumerate(lengths):
        ids = []
        for n in row:
            text = torch.randint(10, 200, (n - PRESET.visual_tokens,), generator=generator).tolist()
            ids += text[:2] + [IMAGE] * PRESET.visual_tokens + text[2:]
        input_ids[b, :len(ids)] = torch.tensor(ids)
    images = sum(len(row) for row in lengths)
    pixels = torch.randn(images, 3, PRESET.image_size, PRESET.image_size, generator=generator)
    return {"input_ids": input_ids, "pixel_values": pixels, "segment_lengths": lengths}


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_a_row_runs_at_the_next_power_of_two_of_at_least_one_block():
    assert [bucket_length(n) for n in (1, 100, 128, 129, 300, 512, 700, 1025)] == [128] * 3 + [256, 512, 512, 1024, 2048]
    document_ids = torch.tensor([[0] * 200 + [1] * 100])
    assert build_attention_mask(document_ids, document_ids, "flex_attention").seq_lengths == (512, 512)
    # a decoding step's padded queries each find their own key: the keys' bucket reaches past them
    step = build_attention_mask(document_ids[:, -1:], document_ids, "flex_attention", query_offset=299)
    assert step.seq_lengths == (128, 512)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's flex_attention
def test_rows_of_changing_length_give_sdpas_logits_and_compile_once_per_bucket():
    """300 then 700 tokens (buckets 512 and 1024) in one process, then 800 (1024 again): no compiler
    crash, sdpa's logits each time, and the third length reuses the second's kernel."""
    model = build_model(PRESET, vocab_size=256, image_token_id=IMAGE, pad_token_id=PAD).eval()
    batches = [packed_rows([[120, 180], [100, 150]], seed=0),  # 300 wide, the second row padded
               packed_rows([[250, 250, 200], [300, 300]], seed=1),  # 700
               packed_rows([[400, 400], [200, 300, 250]], seed=2)]  # 800
    graphs = []
    for batch in batches:
        with torch.no_grad():
            model.set_attention("sdpa")
            dense = model(**batch).logits
            model.set_attention("flex_attention")
            flex = model(**batch).logits
        torch.testing.assert_close(flex, dense, atol=1e-4, rtol=1e-4)
        graphs.append(compiled_graphs())
    assert graphs[2] == graphs[1], "a length in a bucket already compiled must not compile again"
