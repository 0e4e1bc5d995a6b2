"""Instruction templates: the sets per task and language, brevity wording, deterministic choice."""
from __future__ import annotations

import collections

import pytest

from templates.chat import get_chat_format
from templates.library import TemplateError, choose_template, load_task_templates, template_by_id


@pytest.mark.parametrize("task", ["captioning", "vqa"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_each_task_has_ten_to_fifteen_short_and_open_templates_per_language(task, lang):
    pool = [t for t in load_task_templates(task) if t.lang == lang and t.brevity != "long"]
    assert 10 <= len(pool) <= 15
    assert len({t.id for t in pool}) == len(pool)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_captioning_has_ten_long_templates_asking_for_a_detailed_description(lang):
    detailed = [t for t in load_task_templates("captioning") if t.lang == lang and t.brevity == "long"]
    assert [t.id for t in detailed] == [f"capdetail_{lang}_{k:02d}" for k in range(1, 11)]
    asks = ("detail", "thorough", "at length", "as fully", "in-depth", "comprehensive") if lang == "en" else \
        ("详细", "详尽", "细致", "全面", "完整")
    assert all(any(word in t.prompt.lower() for word in asks) for t in detailed)


def test_a_long_template_is_drawn_only_where_long_wording_is_asked():
    unasked = {choose_template("captioning", "en", f"coco:{i}", seed=0).brevity for i in range(500)}
    asked = {choose_template("captioning", "en", f"coco:{i}", seed=0, brevity="long").id for i in range(500)}
    assert unasked == {"short", "none"}
    assert asked == {f"capdetail_en_{k:02d}" for k in range(1, 11)}


@pytest.mark.parametrize("task", ["captioning", "vqa"])
def test_only_some_templates_ask_for_brevity(task):
    brevity = collections.Counter(t.brevity for t in load_task_templates(task) if t.lang == "en")
    assert 0 < brevity["short"] < sum(brevity.values())
    for t in load_task_templates(task):
        words = t.prompt.lower()
        says_short = any(w in words for w in ("short", "brief", "concise", "single word", "three words", "few words"))
        if t.lang == "en":
            assert says_short == (t.brevity == "short"), t.id


def test_render_fills_the_record_into_user_and_assistant_turns():
    messages = template_by_id("vqa_en_03").render({"question": "What color is the circle?", "answer": "red"})
    assert messages == [
        {"role": "user", "content": "<image>\nQuestion: What color is the circle? Short answer:"},
        {"role": "assistant", "content": "red"},
    ]


def test_a_record_missing_a_field_is_a_named_error():
    with pytest.raises(TemplateError, match="cap_en_01.*'caption' is undefined"):
        template_by_id("cap_en_01").render({"id": "x"})


def test_template_choice_is_uniform_and_deterministic():
    ids = [choose_template("vqa", "en", f"vqav2:train:{i}", seed=0).id for i in range(2200)]
    assert ids == [choose_template("vqa", "en", f"vqav2:train:{i}", seed=0).id for i in range(2200)]
    counts = collections.Counter(ids)
    assert len(counts) == 11 and min(counts.values()) > 140  # 200 expected each
    assert ids != [choose_template("vqa", "en", f"vqav2:train:{i}", seed=1).id for i in range(2200)]


def test_llava_v1_chat_layout_matches_llava_conversation_format():
    fmt = get_chat_format("llava_v1")
    text = "".join(t for t, _ in fmt.pieces([{"role": "user", "content": "<image>\nHi?"},
                                             {"role": "assistant", "content": "Hello."}]))
    assert text == ("<s>A chat between a curious user and an artificial intelligence assistant. The assistant "
                    "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\nHi? "
                    "ASSISTANT: Hello.</s>")
