"""Visual-reasoning templates: GQA and IconQA questions through the drawn set, VSR statements through the eval prompt."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from catalog.adapters.gqa import read_gqa
from catalog.adapters.iconqa import read_iconqa
from catalog.adapters.vsr import read_vsr
from jobs.template_tools import BREVITY_WORDS  # the words `loom templates lint` reads as asking for brevity
from pipelines.shapes_world.formats.gqa import write_gqa
from pipelines.shapes_world.formats.iconqa import write_iconqa
from pipelines.shapes_world.formats.vsr import write_vsr
from templates.library import TemplateError, choose_template, load_task_templates, render_for_record, template_by_id

TASK = "visual_reasoning"


def english_templates(task: str) -> tuple:
    """The task's English templates: these tests hold the English wording (tests/test_templates_chinese.py the Chinese)."""
    return tuple(t for t in load_task_templates(task) if t.lang == "en")


def drawable() -> list:
    return [t for t in english_templates(TASK) if t.lang == "en" and t.draw]


def wording(prompt: str) -> str:
    """A prompt's own words, its Jinja fields and blocks left out."""
    return re.sub(r"\{[{%].*?[%}]\}", "", prompt.removeprefix("<image>\n")).lower()


def assert_clean(text: str, where) -> None:
    """No stray whitespace or empty line where an absent field (GQA's choices) printed nothing."""
    assert text == text.strip() and "\n\n" not in text and "  " not in text and " \n" not in text, where


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("visual_reasoning_templates")
    gqa = write_gqa(out / "gqa", seed=4, scenes=4)
    iconqa = write_iconqa(out / "iconqa", seed=4, scenes=18)
    vsr = write_vsr(out / "vsr", seed=4, scenes=6)
    by_dataset = {
        "gqa": [r for split, path in gqa["files"].items() for r in read_gqa(path, gqa["images"], split)],
        # choose_img choices are image paths, which a text prompt cannot show: InstructBLIP evaluates choose_txt.
        "iconqa": [r for split in ("train", "val", "test")
                   for r in read_iconqa(iconqa["data_root"], split, sub_tasks=("choose_txt", "fill_in_blank"))],
        "vsr": [r for split in ("train", "dev", "test")
                for r in read_vsr(Path(vsr["annotation_dir"]) / f"{split}.jsonl", vsr["image_root"], split)],
    }
    assert {r["question_type"] for r in by_dataset["iconqa"]} == {"choose_txt", "fill_in_blank"}
    assert {r["answer"] for r in by_dataset["vsr"]} == {"true", "false"}
    return by_dataset


def test_ten_to_fifteen_drawable_english_templates_and_two_eval_prompts():
    templates = drawable()
    assert 10 <= len(templates) <= 15
    assert [t.id for t in templates] == [f"vr_en_{n:02d}" for n in range(1, len(templates) + 1)]
    evals = [t for t in english_templates(TASK) if not t.draw]
    assert sorted(t.id for t in evals) == ["vr_eval_multiple_choice", "vr_eval_statement"]
    assert all(t.response == "{{ answer }}" for t in english_templates(TASK))


def test_every_prompt_opens_with_the_image():
    for template in english_templates(TASK):
        assert template.prompt.startswith("<image>\n") and template.prompt.count("<image>") == 1, template.id


def test_about_a_third_of_the_drawn_templates_ask_for_a_short_answer():
    templates = drawable()
    for template in english_templates(TASK):
        says_short = any(word in template.prompt.lower() for word in BREVITY_WORDS)
        assert says_short == (template.brevity == "short"), template.id
    shorts = sum(t.brevity == "short" for t in templates)
    assert len(templates) / 4 <= shorts <= len(templates) / 2


def test_no_two_templates_are_nearly_the_same():
    texts = {t.id: wording(t.prompt) for t in drawable()}
    for a in texts:
        for b in texts:
            if a < b:
                assert difflib.SequenceMatcher(None, texts[a], texts[b]).ratio() < 0.75, (a, b)


def test_some_drawn_templates_show_the_options_and_some_do_not():
    shows = [t.id for t in drawable() if "choices | options" in t.prompt]
    assert 0 < len(shows) < len(drawable())


@pytest.mark.parametrize("dataset", ["gqa", "iconqa"])
def test_every_question_renders_with_every_drawn_template(records, dataset):
    for record in records[dataset]:
        for template in drawable():
            user, assistant = template.render(record)
            where = (template.id, record["id"])
            assert record["question"] in user["content"], where
            assert assistant["content"] == record["answer"], where
            assert_clean(user["content"], where)
            if "choices | options" in template.prompt and record.get("choices"):
                lettered = ", ".join(f"({letter}) {c}" for letter, c in zip("abcdefgh", record["choices"]))
                assert f"Options: {lettered}" in user["content"], where
            else:
                assert "Options:" not in user["content"], where


def test_vsr_statements_render_with_the_statement_prompt(records):
    template = template_by_id("vr_eval_statement")
    for record in records["vsr"]:
        user, assistant = template.render(record)
        assert user["content"] == ("<image>\nIs the following statement about the image true or false? "
                                   f"{record['caption']}")
        assert assistant["content"] == record["answer"] == {0: "false", 1: "true"}[record["label"]]


def test_vsr_through_a_drawn_template_is_a_named_error_so_its_config_must_pin_the_statement_prompt(records):
    record = records["vsr"][0]
    for template in drawable():
        with pytest.raises(TemplateError, match=f"{template.id}.*'question' is undefined"):
            template.render(record)
    pinned, messages = render_for_record(record, seed=0, template_id="vr_eval_statement")
    assert pinned.id == "vr_eval_statement" and messages[1]["content"] == record["answer"]


def test_iconqa_text_choices_render_with_the_multiple_choice_prompt(records):
    template = template_by_id("vr_eval_multiple_choice")
    choose_txt = [r for r in records["iconqa"] if r["question_type"] == "choose_txt"]
    assert choose_txt
    for record in choose_txt:
        user, assistant = template.render(record)
        options = ", ".join(f"({letter}) {c}" for letter, c in zip("abcdefgh", record["choices"]))
        assert user["content"] == (f"<image>\nQuestion: {record['question']}\nOptions: {options}\n"
                                   "Answer with the text of the correct option.")
        assert assistant["content"] == record["choices"][record["answer_index"]]


def test_eval_prompts_are_never_drawn(records):
    drawn = {choose_template(TASK, "en", f"gqa:val:{i}", seed=0).id for i in range(600)}
    assert drawn == {t.id for t in drawable()}
