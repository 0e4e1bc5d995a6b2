"""The LLaVA-1.5 model (vlm.model, vlm.preset): packing, image scatter, freezing, presets."""

from __future__ import annotations

import pytest
import torch

import vlm
from vlm.data import PackedDataset
from vlm.builders import build_model
from vlm.model import count_parameters
from vlm.packed_masks import build_attention_mask
from vlm.preset import get_preset

from test_vlm_data import write_packed_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_packed_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def packed_batch(corpus):
    """Two packed rows of different lengths (so one is padded), with their images."""
    pack_dir, samples = corpus
    dataset = PackedDataset(pack_dir, batch_size=2, shuffle=False)
    batch, _ = next(dataset.batches())
    by_id = {s["id"]: s for s in samples}
    return dataset, batch, by_id


def tiny_model(dataset, attn="sdpa", seed=0):
    return build_model(
        "llava-1.5-tiny", vocab_size=64, image_token_id=dataset.image_token_id,
        pad_token_id=dataset.pad_token_id, attn_implementation=attn, seed=seed,
    ).eval()


def run_alone(model, dataset, sample):
    """Logits and summed loss of one sample run by itself, as an unpacked batch of one."""
    input_ids = torch.tensor([sample["input_ids"]])
    labels = torch.tensor([sample["labels"]])
    pixels = dataset.images.stack([sample["image"]] if sample["image"] else [])
    out = model(input_ids, pixels, labels=labels)
    return out.logits[0], out.loss * out.num_tokens, out.num_tokens


@pytest.mark.parametrize("attn", ["sdpa", "eager", "segment_sdpa"])
def test_packed_logits_equal_each_sample_run_alone(packed_batch, attn):
    dataset, batch, by_id = packed_batch
    model = tiny_model(dataset, attn)
    with torch.no_grad():
        packed = model(**batch.model_inputs())
        for row, ids in enumerate(batch.ids):
            assert len(ids) > 1, "the fixture should pack several samples per row"
            start = 0
            for sample_id in ids:
                sample = by_id[sample_id]
                alone, _, _ = run_alone(model, dataset, sample)
                n = len(sample["input_ids"])
                torch.testing.assert_close(packed.logits[row, start: start + n], alone, atol=1e-4, rtol=1e-4)
                start += n


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's flex_attention
def test_flex_attention_mask_gives_the_same_logits_as_sdpa(packed_batch):
    # CPU flex_attention has no backward; forward equality is what proves the BlockMask right.
    dataset, batch, _ = packed_batch
    sdpa, flex = tiny_model(dataset, "sdpa"), tiny_model(dataset, "flex_attention")
    with torch.no_grad():
        expected = sdpa(**batch.model_inputs()).logits
        got = flex(**batch.model_inputs()).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_segment_sdpa_gradients_equal_dense_masked_sdpa(packed_batch):
    dataset, batch, _ = packed_batch
    grads = {}
    for mode in ("sdpa", "segment_sdpa"):
        model = tiny_model(dataset, mode)
        model(**batch.model_inputs()).loss.backward()
        grads[mode] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["sdpa"].keys() == grads["segment_sdpa"].keys()
    for name, grad in grads["sdpa"].items():
        torch.testing.assert_close(grads["segment_sdpa"][name], grad, atol=1e-5, rtol=1e-4)


def test_packed_loss_is_the_per_token_mean_over_all_samples(packed_batch):
    dataset, batch, by_id = packed_batch
    model = tiny_model(dataset)
    with torch.no_grad():
        packed = model(**batch.model_inputs())
        loss_sums, counts = zip(*[run_alone(model, dataset, by_id[i])[1:] for ids in batch.ids for i in ids])
    assert packed.num_tokens == sum(counts) == batch.num_tokens
    torch.testing.assert_close(packed.loss, sum(loss_sums) / sum(counts), atol=1e-5, rtol=1e-5)


def test_no_token_is_predicted_across_a_segment_boundary(packed_batch):
    # Even if a packer supervised a segment's first token, the model must not learn to guess it
    # from the previous sample's last token.
    dataset, batch, _ = packed_batch
    model = tiny_model(dataset)
    leaky_labels = batch.input_ids.clone()
    starts = batch.position_ids == 0
    leaky_labels[~starts] = -100  # supervise only segment starts
    with torch.no_grad():
        out = model(batch.input_ids, batch.pixel_values, labels=leaky_labels, document_ids=batch.document_ids)
    # Only the first token of each row could be a target, and the first token predicts nothing.
    assert out.num_tokens == 0


def test_image_features_land_exactly_at_image_token_positions(packed_batch):
    dataset, batch, _ = packed_batch
    model = tiny_model(dataset)
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.pixel_values)  # (B, L, D)
        features = model.image_features(batch.pixel_values)  # (N, 64, D)
        token_embeds = model.language_model.get_input_embeddings()(batch.input_ids)
    is_image = batch.input_ids == dataset.image_token_id
    assert features.shape == (batch.pixel_values.shape[0], 64, 128)
    torch.testing.assert_close(embeds[is_image], features.reshape(-1, 128), atol=0, rtol=0)
    torch.testing.assert_close(embeds[~is_image], token_embeds[~is_image], atol=0, rtol=0)


def test_features_come_from_the_penultimate_vision_layer_without_cls(packed_batch):
    dataset, batch, _ = packed_batch
    model = tiny_model(dataset)
    pixels = batch.pixel_values[:1]
    with torch.no_grad():
        hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states
        expected = model.connector(hidden[-2][:, 1:])
        torch.testing.assert_close(model.image_features(pixels), expected, atol=0, rtol=0)


def test_image_count_mismatch_is_a_clear_error(packed_batch):
    dataset, batch, _ = packed_batch
    model = tiny_model(dataset)
    with pytest.raises(ValueError, match=r"image-token positions .* images give .* visual tokens"):
        model(batch.input_ids, batch.pixel_values[:-1], document_ids=batch.document_ids)


def test_block_diagonal_causal_mask_shape_and_values():
    document_ids = torch.tensor([[0, 0, 1, 1, 1]])
    mask = build_attention_mask(document_ids, document_ids, "sdpa")[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)
    eager = build_attention_mask(document_ids, document_ids, "eager")[0, 0]
    assert torch.equal(eager == 0, expected)


def test_set_trainable_freezes_every_other_group(packed_batch):
    dataset, _, _ = packed_batch
    model = tiny_model(dataset)
    model.set_trainable(["connector"])
    assert model.trainable_groups == ["connector"]
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert [g["name"] for g in model.parameter_groups()] == ["connector"]
    model.set_trainable(["connector", "llm"])
    assert model.trainable_groups == ["connector", "llm"]
    with pytest.raises(ValueError, match=r"has no parameter group\(s\) \[.projector.\]; its groups are"):
        model.set_trainable(["projector"])


def test_tiny_preset_size():
    preset = get_preset("llava-1.5-tiny")
    assert preset.visual_tokens == 64
    model = build_model(preset, vocab_size=64, image_token_id=4, pad_token_id=1)
    counts = count_parameters(model)
    assert counts["total"] < 2_000_000


def test_published_preset_matches_llava_1_5_7b():
    preset = get_preset("llava-1.5")
    assert preset.visual_tokens == 576  # (336 / 14)^2, CLS dropped
    with torch.device("meta"):  # shapes only: no 28 GB allocation
        # The llava-1.5-7b-hf vocabulary: Vicuna's 32000, <image> at 32000, <pad> at 32001, padded to 32064.
        model = build_model(preset, vocab_size=32064, image_token_id=32000, pad_token_id=32001)
    counts = count_parameters(model)
    assert counts["vision"] == 303_507_456  # CLIP ViT-L/14-336 vision tower
    assert counts["connector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert counts["llm"] == 6_738_415_616 + 2 * 64 * 4096  # Vicuna-7B v1.5 + 64 rows in embeddings and head
    assert preset.llm["vocab_size"] == 32000
    pretrain, instruct = vlm.stages("llava-1.5")
    assert (pretrain.trainable, pretrain.lr, pretrain.epochs) == (("connector",), 1e-3, 1)
    assert (instruct.trainable, instruct.lr, instruct.warmup_ratio) == (("connector", "llm"), 2e-5, 0.03)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown preset 'llava-2'; known presets: blip2-opt, .*llava-1.5, .*minigpt-v2 "
                                       r"\(each also at size='tiny'"):
        get_preset("llava-2")
