"""The staged trainer (vlm.train) and greedy VQA evaluation (vlm.evaluate)."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
import torch
from transformers import AutoTokenizer

import vlm.train
from vlm.evaluate import answer_questions, normalize_answer, vqa_accuracy, _prompt_ids
from vlm.generate import generate as generate_greedy
from vlm.builders import build_model
from vlm.preset import get_preset
from vlm.train import TrainConfig, load_model, read_log, train_stage

from test_vlm_data import COLOURS, vqa_prompt, write_packed_corpus

PRESET = get_preset("llava-1.5-tiny")


def short(stage, steps: int = 3, **schedule):
    """`stage` cut to `steps` optimizer steps (and any other schedule change): a test's run, not the paper's."""
    return dataclasses.replace(stage, max_steps=steps, **schedule)


PRETRAIN, INSTRUCT = short(PRESET.stage("pretrain")), short(PRESET.stage("instruct"))


def new_model(pack_dir, seed=0):
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(pack_dir / "tokenizer")
    return build_model(PRESET, vocab_size=len(tokenizer), image_token_id=manifest["image_token_id"],
                       pad_token_id=manifest["pad_token_id"], seed=seed)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def quick(**overrides):
    return TrainConfig(**{"batch_size": 2, "progress": False, "tensorboard": False, **overrides})


@contextlib.contextmanager
def killed_in_step(step: int):
    """The block's train_stage stopped as a kill stops it: in `step`, after the checkpoints before it."""
    real_append = vlm.train._append_log

    def killed(path, record):
        if record["step"] == step:
            raise KeyboardInterrupt("killed")
        real_append(path, record)

    vlm.train._append_log = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        vlm.train._append_log = real_append


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_packed_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def stage_one(corpus, tmp_path_factory):
    """Stage 1 run for three steps, with the weights before and after."""
    pack_dir, _ = corpus
    model = new_model(pack_dir)
    before = {name: snapshot(m) for name, m in model.groups.items()}
    out_dir = tmp_path_factory.mktemp("stage1")
    summary = train_stage(model, PRETRAIN, pack_dir, out_dir, quick())
    after = {name: snapshot(m) for name, m in model.groups.items()}
    return out_dir, summary, before, after


def test_stage_1_trains_only_the_connector(stage_one):
    _, summary, before, after = stage_one
    assert same(before["vision"], after["vision"])
    assert same(before["llm"], after["llm"])
    assert not same(before["connector"], after["connector"])
    assert summary["trainable_groups"] == ["connector"]
    assert summary["trainable_params"] == sum(v.numel() for v in after["connector"].values())


def test_stage_2_starts_from_stage_1_and_changes_the_llm_not_the_vision_tower(stage_one, corpus, tmp_path):
    stage1_dir, _, _, stage1 = stage_one
    pack_dir, _ = corpus
    model = new_model(pack_dir, seed=1)  # a different init: only init_from can make it equal stage 1
    assert not same(snapshot(model.vision_tower), stage1["vision"])
    train_stage(model, INSTRUCT, pack_dir, tmp_path, quick(init_from=str(stage1_dir)))
    assert same(snapshot(model.vision_tower), stage1["vision"])
    assert not same(snapshot(model.language_model), stage1["llm"])
    assert not same(snapshot(model.connector), stage1["connector"])


def test_a_killed_stage_resumes_to_the_same_losses_and_weights(corpus, tmp_path, monkeypatch):
    pack_dir, _ = corpus
    # Accumulation and an epoch boundary inside the run: the data position must survive both.
    config, stage = quick(checkpoint_every=3, grad_accum=2), short(INSTRUCT, 6)

    uninterrupted = new_model(pack_dir)
    train_stage(uninterrupted, stage, pack_dir, tmp_path / "a", config)
    expected = [r["loss"] for r in read_log(tmp_path / "a")]
    assert read_log(tmp_path / "a")[-1]["epoch"] >= 1

    real_append = vlm.train._append_log

    def killed_at_step_5(path, record):
        if record["step"] == 5:
            raise KeyboardInterrupt("killed")
        real_append(path, record)

    monkeypatch.setattr(vlm.train, "_append_log", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_stage(new_model(pack_dir), stage, pack_dir, tmp_path / "b", config)
    assert [r["step"] for r in read_log(tmp_path / "b")] == [1, 2, 3, 4]
    monkeypatch.setattr(vlm.train, "_append_log", real_append)

    resumed = new_model(pack_dir, seed=5)  # fresh process state: everything must come from the checkpoint
    summary = train_stage(resumed, stage, pack_dir, tmp_path / "b", config)
    assert summary["resumed_from_step"] == 3
    assert [r["loss"] for r in read_log(tmp_path / "b")] == expected
    assert same(snapshot(resumed), snapshot(uninterrupted))


def test_resuming_with_a_different_batch_size_is_refused(corpus, tmp_path, monkeypatch):
    pack_dir, _ = corpus

    def killed_at_step_2(path, record):
        if record["step"] == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(vlm.train, "_append_log", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train_stage(new_model(pack_dir), PRETRAIN, pack_dir, tmp_path, quick(checkpoint_every=1))
    with pytest.raises(ValueError, match="saved with batch_size=2, resumed with batch_size=3"):
        train_stage(new_model(pack_dir), PRETRAIN, pack_dir, tmp_path, quick(checkpoint_every=1, batch_size=3))


def test_activation_checkpointing_changes_memory_not_losses(corpus, tmp_path):
    pack_dir, _ = corpus
    train_stage(new_model(pack_dir), INSTRUCT, pack_dir, tmp_path / "plain", quick())
    train_stage(new_model(pack_dir), INSTRUCT, pack_dir, tmp_path / "ckpt", quick(activation_checkpointing=True))
    plain = [r["loss"] for r in read_log(tmp_path / "plain")]
    recomputed = [r["loss"] for r in read_log(tmp_path / "ckpt")]
    assert recomputed == pytest.approx(plain, rel=1e-5)


def test_a_completed_stage_is_skipped_and_hands_back_its_weights(stage_one, corpus):
    stage1_dir, summary, _, after = stage_one
    pack_dir, _ = corpus
    log_before = (stage1_dir / "log.jsonl").read_text()
    model = new_model(pack_dir, seed=3)
    again = train_stage(model, PRETRAIN, pack_dir, stage1_dir, quick())
    assert again == summary
    assert (stage1_dir / "log.jsonl").read_text() == log_before
    assert same(snapshot(model.connector), after["connector"])


def test_load_model_rebuilds_the_checkpointed_model(stage_one, corpus):
    stage1_dir, _, _, after = stage_one
    model = load_model(stage1_dir)
    assert model.preset == PRESET
    for name, module in model.groups.items():
        assert same(snapshot(module), after[name])
    checkpoint = stage1_dir / "checkpoint"
    assert {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng.pt",
            "trainer_state.json", "tokenizer"} <= {p.name for p in checkpoint.iterdir()}
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 3 and set(state["position"]) == {"epoch", "index"}


# -- overfitting a trivial task, then answering -------------------------------------------------

@pytest.fixture(scope="module")
def colour_task(tmp_path_factory):
    """Eight images, one question ("what colour?"), the answer only the image can give; 40 steps."""
    root = tmp_path_factory.mktemp("colours")
    samples = [
        {"id": f"{c}-{s}", "task": "vqa", "colour": c, "shape": s, "size": (64, 48),
         "prompt": vqa_prompt("what colour is the shape?"), "answer": c}
        for c in COLOURS for s in ("square", "circle")
    ]
    pack_dir, samples = write_packed_corpus(root, samples=samples)
    model = new_model(pack_dir)
    summary = train_stage(model, short(INSTRUCT, 40, warmup_ratio=0.1), pack_dir, root / "out", quick(batch_size=3))
    tokenizer = AutoTokenizer.from_pretrained(pack_dir / "tokenizer")
    return model, tokenizer, samples, summary, root / "out"


def test_loss_decreases_when_overfitting_a_small_batch(colour_task):
    _, _, _, summary, out_dir = colour_task
    losses = [r["loss"] for r in read_log(out_dir)]
    assert len(losses) == 40
    assert summary["final_loss"] < summary["first_loss"] / 5
    assert sum(losses[-5:]) < sum(losses[:5]) / 5


def test_greedy_generation_answers_what_was_learned(colour_task):
    model, tokenizer, samples, _, _ = colour_task
    answers = answer_questions(model, tokenizer, samples, max_new_tokens=4, batch_size=3)
    assert answers == [s["answer"] for s in samples]
    assert vqa_accuracy(answers, [[s["answer"]] for s in samples])["exact_match"] == 1.0


def test_prompt_fn_formats_items_that_carry_only_a_question(colour_task):
    model, tokenizer, samples, _, _ = colour_task
    items = [{"image": s["image"], "question": "what colour is the shape?"} for s in samples[:2]]
    answers = answer_questions(model, tokenizer, items, prompt_fn=lambda item: vqa_prompt(item["question"]))
    assert answers == [s["answer"] for s in samples[:2]]


def test_batched_cached_generation_equals_one_by_one_without_cache(corpus):
    pack_dir, samples = corpus
    model = new_model(pack_dir, seed=11).eval()  # untrained: long, arbitrary continuations
    tokenizer = AutoTokenizer.from_pretrained(pack_dir / "tokenizer")
    with_images = [s for s in samples if s["image"]][:3]
    prompts = [vqa_prompt(q) for q in ("what colour is the shape?", "what shape is it?", "describe the image.")]
    ids = [_prompt_ids(tokenizer, p, model.image_token_id, model.visual_tokens) for p in prompts]
    assert len({len(i) for i in ids}) == 3  # different lengths: left padding is exercised
    from vlm.images import ImageProcessor
    pixels = ImageProcessor(PRESET).stack([s["image"] for s in with_images])
    never = -1  # no eos: compare full-length continuations
    batched = generate_greedy(model, ids, pixels, never, tokenizer.pad_token_id, max_new_tokens=6, use_cache=True)
    one_by_one = [
        generate_greedy(model, [i], pixels[b: b + 1], never, tokenizer.pad_token_id, max_new_tokens=6, use_cache=False)[0]
        for b, i in enumerate(ids)
    ]
    assert batched == one_by_one
    assert all(len(c) == 6 for c in batched)


def test_a_prompt_without_exactly_one_image_is_refused(corpus):
    pack_dir, _ = corpus
    tokenizer = AutoTokenizer.from_pretrained(pack_dir / "tokenizer")
    with pytest.raises(ValueError, match="expected exactly 1"):
        _prompt_ids(tokenizer, "<s> USER: what colour is the shape? ASSISTANT:", 4, 64)


# -- VQA accuracy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, normal", [
    ("Red.", "red"),
    ("The red car", "red car"),
    ("two", "2"),
    ("None", "0"),
    ("a circle!", "circle"),
    ("2.5", "2.5"),
    ("1,000", "1000"),
    ("t-shirt", "t shirt"),
    ("dont", "don't"),
    ("  YES  ", "yes"),
])
def test_answers_are_normalised_like_the_vqa_evaluation(raw, normal):
    assert normalize_answer(raw) == normal


def test_exact_match_accepts_any_reference_answer():
    result = vqa_accuracy(["Two", "blue", "square"], [["2"], ["red", "the blue"], ["circle"]])
    assert result["exact_match"] == pytest.approx(2 / 3)
    assert result["count"] == 3


def test_vqa_accuracy_with_ten_human_answers():
    humans = ["yes"] * 4 + ["no"] * 2 + ["maybe"] * 1 + ["unsure"] * 3
    result = vqa_accuracy(["yes", "no", "unsure", "blue"], [humans] * 4)
    # 4 agreeing humans: 1.0; 2: leave-one-out mean of 2/3 and 1/3 = 0.6; 3: 0.9; none: 0.
    assert result["vqa"] == pytest.approx((1.0 + 0.6 + 0.9 + 0.0) / 4)
    assert result["exact_match"] == pytest.approx(3 / 4)


def test_cider_d_gives_the_coco_caption_evaluation_scores():
    """Scores recorded from pycocoevalcap's Cider (the COCO caption evaluation's CIDEr-D) on these captions."""
    import random

    from vlm.evaluate import cider_d

    expected = {0: 0.5736088174992775, 1: 0.5083502611708673, 2: 0.6015063609720844}
    words = "a red blue green square circle star two one left right small big the on of".split()
    for seed, score in expected.items():
        rng = random.Random(seed)
        candidates, references = [], []
        for _ in range(30):
            references.append([" ".join(rng.choices(words, k=rng.randint(3, 8))) for _ in range(5)])
            candidates.append(" ".join(rng.choices(words, k=rng.randint(3, 8))))
        assert cider_d(candidates, references) == pytest.approx(score, rel=1e-12)
    refs = [["a red square on the left", "a red square"], ["two blue circles", "blue circles"]]
    assert cider_d(["a red square", "two blue circles"], refs) > cider_d(["two blue circles", "a red square"], refs) == 0


def test_a_stage_writes_its_loss_and_learning_rate_to_tensorboard(corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pack_dir, _ = corpus
    train_stage(new_model(pack_dir), INSTRUCT, pack_dir, tmp_path, quick(tensorboard=True))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = read_log(tmp_path)
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in logged]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3]


def test_a_compiled_stage_logs_the_losses_of_an_eager_one(corpus, tmp_path, fresh_compiler):
    pack_dir, _ = corpus
    train_stage(new_model(pack_dir), short(INSTRUCT, 2), pack_dir, tmp_path / "eager", quick())
    train_stage(new_model(pack_dir), short(INSTRUCT, 2), pack_dir, tmp_path / "compiled", quick(compile=True))
    eager, compiled = read_log(tmp_path / "eager"), read_log(tmp_path / "compiled")
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-4)
