"""Tokenizing in the chat format and packing into fixed-length sequences."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.pack import assign_bins, build_sequences, fill_stats, pack_figures, plan_sequences
from pipelines.tokenize import IGNORE, Encoder
from pipelines.tokenizer_training import train_bpe
from templates.chat import get_chat_format

FORMAT = get_chat_format("llava_v1")
TEXTS = ["Two red circles and a blue square on a white background.", "白色背景上有两个红色圆形。",
         "What color is the triangle?", "How many circles are there?", "red", "2"] * 40


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_bpe(FORMAT.strings() + TEXTS, 500, tmp_path_factory.mktemp("tok"))


def conversation(question="What color is the triangle?", answer="red"):
    return [{"role": "user", "content": f"<image>\n{question}"}, {"role": "assistant", "content": answer}]


def test_image_expands_to_the_architectures_visual_token_count(tokenizer):
    for visual_tokens in (32, 64, 576):
        ids, labels, images = Encoder(tokenizer, FORMAT, visual_tokens).encode(conversation())
        image_id = tokenizer.token_to_id("<image>")
        assert images == 1 and int((ids == image_id).sum()) == visual_tokens
        assert np.all(labels[ids == image_id] == IGNORE)


def test_loss_only_on_the_assistant_answer_and_its_end(tokenizer):
    ids, labels, _ = Encoder(tokenizer, FORMAT, 8).encode(conversation(answer="red"))
    trained = [int(t) for t, l in zip(ids, labels) if l != IGNORE]
    assert tokenizer.decode(trained, skip_special_tokens=False) == " red</s>"
    assert labels[0] == IGNORE


def test_loss_on_all_text_still_skips_images(tokenizer):
    ids, labels, _ = Encoder(tokenizer, FORMAT, 8, loss_on="all").encode(conversation())
    image_id = tokenizer.token_to_id("<image>")
    assert np.all((labels == IGNORE) == ((ids == image_id) | (np.arange(len(ids)) == 0)))


def test_prompt_ids_are_a_prefix_of_the_training_ids(tokenizer):
    encoder = Encoder(tokenizer, FORMAT, 8)
    full, _, _ = encoder.encode(conversation())
    prompt = encoder.encode_prompt(conversation()[:1])
    assert np.array_equal(full[: len(prompt)], prompt)


def test_assign_bins_respects_capacity_and_places_every_sample():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 2049, size=5000)
    bins = assign_bins(lengths, 2048)
    assert bins.shape == lengths.shape and bins.min() == 0
    assert np.bincount(bins, weights=lengths).max() <= 2048
    assert set(np.unique(bins)) == set(range(bins.max() + 1))


def test_assign_bins_is_deterministic_and_near_the_lower_bound():
    rng = np.random.default_rng(1)
    lengths = rng.integers(100, 400, size=10000)
    bins = assign_bins(lengths, 2048)
    assert np.array_equal(bins, assign_bins(lengths, 2048))
    stats = fill_stats(np.bincount(lengths, minlength=2049), bins.max() + 1, 2048)
    assert stats["sequences"] <= stats["lower_bound_sequences"] * 1.01


def test_assign_bins_refuses_lengths_beyond_the_sequence():
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        assign_bins(np.array([3, 17]), 16)


def test_packed_rows_concatenate_samples_with_their_segment_lengths(tokenizer):
    encoder = Encoder(tokenizer, FORMAT, 4)
    samples = []
    for i, (q, a) in enumerate([("What color is the triangle?", "red"), ("How many circles are there?", "2")]):
        ids, labels, _ = encoder.encode(conversation(q, a))
        samples.append({"input_ids": ids, "labels": labels, "images": [{"path": f"{i}.jpg"}], "task": "vqa", "id": str(i)})
    table = build_sequences(samples, np.array([0, 0]))
    row = table.to_pylist()[0]
    assert row["segment_lengths"] == [len(s["input_ids"]) for s in samples]
    assert row["input_ids"] == [int(t) for s in samples for t in s["input_ids"]]
    assert [im["path"] for im in row["images"]] == ["0.jpg", "1.jpg"]
    # the first token of the second segment is never a target: nothing is predicted across samples
    assert row["labels"][row["segment_lengths"][0]] == IGNORE


def _best_fit_one_by_one(lengths, seq_len):
    """Best-fit decreasing sample by sample, the textbook way: how many sequences it opens."""
    free = []
    for length in sorted(lengths, reverse=True):
        fitting = [k for k, f in enumerate(free) if f >= length]
        if fitting:
            best = min(fitting, key=lambda k: free[k])
            free[best] -= length
        else:
            free.append(seq_len - length)
    return len(free)


def test_assign_bins_opens_exactly_as_many_sequences_as_best_fit_sample_by_sample():
    rng = np.random.default_rng(7)
    for trial in range(150):
        n = int(rng.integers(1, 400))
        lengths = [rng.integers(1, 2049, n), rng.choice([576 + 40, 576 + 90, 32 + 20, 1200, 2048, 1024, 1], n),
                   np.minimum(2048, rng.geometric(1 / 300, n))][trial % 3]
        bins = assign_bins(lengths, 2048)
        assert np.bincount(bins, weights=lengths).max() <= 2048
        assert bins.max() + 1 == _best_fit_one_by_one(lengths.tolist(), 2048), trial


def test_sequences_are_numbered_in_the_order_of_their_first_sample():
    lengths = np.random.default_rng(3).integers(1, 700, size=3000)
    bins = assign_bins(lengths, 2048)
    firsts = [int(np.flatnonzero(bins == k)[0]) for k in range(bins.max() + 1)]
    assert firsts == sorted(firsts)


def test_a_window_bounds_which_samples_can_share_a_sequence():
    lengths = np.random.default_rng(4).integers(1, 900, size=5000)
    bins = plan_sequences(lengths, 2048, window=1000)
    for start in range(0, 5000, 1000):
        inside = set(bins[start:start + 1000].tolist())
        assert inside.isdisjoint(bins[:start].tolist()) and inside.isdisjoint(bins[start + 1000:].tolist())
    assert np.array_equal(plan_sequences(lengths, 2048, window=10_000), assign_bins(lengths, 2048))


def test_groups_never_share_a_sequence():
    rng = np.random.default_rng(5)
    lengths, tasks = rng.integers(1, 500, size=2000), rng.integers(0, 3, size=2000)
    bins = plan_sequences(lengths, 2048, groups=tasks)
    for k in range(bins.max() + 1):
        assert len(set(tasks[bins == k].tolist())) == 1
    assert np.bincount(bins, weights=lengths).max() <= 2048


def test_an_image_cap_bounds_the_images_per_sequence():
    rng = np.random.default_rng(6)
    lengths, images = rng.integers(40, 300, size=3000), rng.integers(0, 3, size=3000)
    bins = plan_sequences(lengths, 2048, images=images, max_images=4)
    assert np.bincount(bins, weights=images).max() <= 4 and np.bincount(bins, weights=lengths).max() <= 2048
    assert set(np.unique(bins)) == set(range(bins.max() + 1))
    with pytest.raises(ValueError, match=r"sample \d+ holds 2 images, more than max_images_per_sequence 1"):
        plan_sequences(lengths, 2048, images=images, max_images=1)


def test_qwen2_vl_sizes_images_as_its_image_processor_does():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from vlm.preset import qwen2_vl_resized, qwen2_vl_visual_tokens

    rng = np.random.default_rng(0)
    sizes = [(448, 448), (10, 1000), (5000, 3000), (57, 91), (28, 28), (1, 150)] + \
        [tuple(int(x) for x in rng.integers(20, 4000, 2)) for _ in range(200)]
    for height, width in sizes:
        assert qwen2_vl_resized(height, width) == smart_resize(height, width, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    assert qwen2_vl_visual_tokens({"width": 448, "height": 448}) == 256  # 32 x 32 patches, merged 2 x 2
    assert qwen2_vl_visual_tokens({"width": 640, "height": 480}) == (476 // 14) * (644 // 14) // 4


@pytest.mark.parametrize("name", ["llava_v1", "blip2_opt", "minigpt4", "llava_v0", "qwen_vl_chatml", "llava_plain"])
def test_the_stop_token_is_the_first_one_a_model_learns_after_its_answer(name, tmp_path):
    """Generation stops where training taught the model an answer ends: "\\n" after a BLIP-2 OPT answer,
    "###" in MiniGPT-4's format, end-of-sequence in LLaVA-1.5's."""
    chat_format = get_chat_format(name)
    tokenizer = train_bpe(chat_format.strings() + TEXTS, 500, tmp_path / "tok", bos=chat_format.bos, eos=chat_format.eos)
    encoder = Encoder(tokenizer, chat_format, 4)
    ids, labels, _ = encoder.encode(conversation(answer="red"))
    answer = encoder.tokenizer.encode(chat_format.assistant.format(content="red"), add_special_tokens=False).ids
    learnt = [int(t) for t in labels if t != IGNORE]
    assert learnt[:len(answer)] == answer and learnt[len(answer)] == encoder.stop_id
    assert (encoder.stop_id == encoder.eos_id) == (chat_format.end_of_turn.startswith(chat_format.eos))


def _figures_from_arrays(lengths, sequence_tokens, tasks, seq_len, buckets=16):
    """The figures as they were computed from per-sample and per-sequence arrays, before windows returned
    histograms: the oracle the histogram path must agree with."""
    width = -(-seq_len // buckets)
    length_counts = np.bincount((lengths - 1) // width, minlength=buckets) if lengths.size else np.zeros(buckets, int)
    fill = np.asarray(sequence_tokens) / seq_len
    fill_counts = np.bincount(np.minimum((fill * 10).astype(int), 9), minlength=10) if fill.size else np.zeros(10, int)
    by_task = {}
    for task, length in zip(tasks, lengths.tolist()):
        entry = by_task.setdefault(task, [0, 0])
        entry[0] += 1
        entry[1] += length
    total_tokens = max(int(lengths.sum()), 1)
    total = int(lengths.sum())
    stats = {"samples": int(len(lengths)), "tokens": total, "sequences": len(sequence_tokens),
             "lower_bound_sequences": -(-total // seq_len),
             "fill": total / (len(sequence_tokens) * seq_len) if len(sequence_tokens) else 0.0}
    return stats, {
        "sample_length": {f"{k * width + 1}-{min((k + 1) * width, seq_len)}": int(c) for k, c in enumerate(length_counts)},
        "sequence_fill": {f"{k / 10:.1f}-{(k + 1) / 10:.1f}": int(c) for k, c in enumerate(fill_counts)},
        "tasks": {task: {"samples": n, "tokens": t, "token_share": round(t / total_tokens, 4)}
                  for task, (n, t) in sorted(by_task.items())},
    }


@pytest.mark.parametrize("seq_len, samples", [(2048, 5000), (100, 700), (333, 1), (512, 0)])
def test_figures_from_histograms_equal_the_figures_from_per_sample_arrays(seq_len, samples):
    rng = np.random.default_rng(seq_len + samples)
    lengths = np.minimum(seq_len, rng.geometric(4 / seq_len, samples)).astype(np.int64)
    tasks = rng.choice(["vqa", "captioning", "chat", "ocr"], samples).tolist()
    bins = assign_bins(lengths, seq_len)
    sequence_tokens = np.bincount(bins, weights=lengths).astype(np.int64) if samples else np.zeros(0, np.int64)
    stats, figures = _figures_from_arrays(lengths, sequence_tokens, tasks, seq_len)

    length_counts = np.bincount(lengths, minlength=seq_len + 1)
    token_counts = np.bincount(sequence_tokens, minlength=seq_len + 1)
    task_counts = {task: (tasks.count(task), int(lengths[[t == task for t in tasks]].sum())) for task in set(tasks)}
    assert fill_stats(length_counts, len(sequence_tokens), seq_len) == stats
    assert pack_figures(length_counts, token_counts, task_counts, seq_len) == figures
