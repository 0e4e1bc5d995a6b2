"""Knowledge-grounded VQA templates: OK-VQA, A-OKVQA and ScienceQA records rendered through every template."""
from __future__ import annotations

import collections
import difflib
import itertools
import re

import pytest

from catalog.adapters.aokvqa import read_aokvqa
from catalog.adapters.okvqa import read_okvqa
from catalog.adapters.scienceqa import read_scienceqa
from pipelines.shapes_world.formats.aokvqa import write_aokvqa
from pipelines.shapes_world.formats.okvqa import write_okvqa
from pipelines.shapes_world.formats.scienceqa import write_scienceqa
from templates.library import TemplateError, choose_template, load_task_templates, template_by_id

TASK = "knowledge_vqa"


def english_templates(task: str) -> tuple:
    """The task's English templates: these tests hold the English wording (tests/test_templates_chinese.py the Chinese)."""
    return tuple(t for t in load_task_templates(task) if t.lang == "en")
SEED = 5
SHORT_WORDING = ("short", "brief", "concise", "succinct", "single word", "one word", "few words", "three words")
# The skill this task teaches: every drawable prompt says outside knowledge is wanted.
KNOWLEDGE_WORDING = ("know", "fact", "common sense", "beyond what is visible", "learned")
# Sentences of InstructBLIP's VQA templates (Table 5): ours are written anew, not copied.
PAPER_SENTENCES = ("a short answer to the question is", "respond to this question with a short answer",
                   "provide your answer as short as possible", "what is the answer to the following question",
                   "can be answered using the image")
DRAWABLE = [t for t in english_templates(TASK) if t.draw]
EVAL = [t for t in english_templates(TASK) if not t.draw]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, list[dict]]:
    """Canonical records per dataset and split, read by the adapters from the shapes-world files."""
    out = tmp_path_factory.mktemp("knowledge_vqa")
    okvqa = write_okvqa(out / "okvqa", seed=SEED, scenes=12)["train2014"]
    aokvqa = write_aokvqa(out / "aokvqa", seed=SEED, scenes=12)
    sqa = write_scienceqa(out / "scienceqa", seed=SEED, scenes=15)
    return {
        "okvqa:train": read_okvqa(okvqa["questions_file"], okvqa["annotations_file"], okvqa["images"], "train"),
        "aokvqa:train": read_aokvqa(aokvqa["train"]["file"], out / "aokvqa" / "coco", "train"),
        "aokvqa:val": read_aokvqa(aokvqa["val"]["file"], out / "aokvqa" / "coco", "val"),
        **{f"scienceqa:{split}": read_scienceqa(sqa["problems_file"], sqa["image_root"], split)
           for split in ("train", "val", "test")},
    }


def training_records(records) -> list[dict]:
    return records["okvqa:train"] + records["aokvqa:train"] + records["scienceqa:train"]


def multiple_choice_records(records) -> list[dict]:
    return records["aokvqa:val"] + records["scienceqa:val"] + records["scienceqa:test"]


def wording(prompt: str) -> str:
    """A prompt's own words: Jinja and the image token removed."""
    return re.sub(r"{[{%].*?[}%]}", " ", prompt).replace("<image>", "").strip().lower()


def assert_clean_layout(text: str, template_id: str):
    assert text.startswith("<image>\n") and text.count("<image>") == 1, template_id
    assert "\n\n" not in text and "  " not in text and not re.search(r"\s$|[ \t]\n", text), (template_id, text)


# ---------------------------------------------------------------- the set


def test_ten_to_fifteen_drawable_english_templates_with_numbered_ids():
    assert 10 <= len(DRAWABLE) <= 15
    assert all(t.lang == "en" and t.task == TASK for t in english_templates(TASK))
    assert [t.id for t in DRAWABLE] == [f"kvqa_en_{i:02d}" for i in range(1, len(DRAWABLE) + 1)]


def test_each_prompt_opens_with_the_image_on_its_own_line():
    for t in english_templates(TASK):
        assert t.prompt.startswith("<image>\n") and t.prompt.count("<image>") == 1, t.id


def test_brevity_is_short_exactly_where_the_wording_asks_for_it():
    for t in english_templates(TASK):
        says_short = any(w in wording(t.prompt) for w in SHORT_WORDING)
        assert says_short == (t.brevity == "short"), t.id


def test_about_a_third_of_the_drawable_templates_ask_for_a_short_answer():
    brevity = collections.Counter(t.brevity for t in DRAWABLE)
    assert set(brevity) == {"short", "none"}
    assert 0.25 <= brevity["short"] / len(DRAWABLE) <= 0.4


def test_every_drawable_prompt_asks_for_outside_knowledge():
    for t in DRAWABLE:
        assert any(w in wording(t.prompt) for w in KNOWLEDGE_WORDING), t.id


def test_no_two_templates_are_nearly_the_same_nor_copied_from_the_paper():
    for a, b in itertools.combinations(english_templates(TASK), 2):
        assert difflib.SequenceMatcher(None, wording(a.prompt), wording(b.prompt)).ratio() < 0.75, (a.id, b.id)
    for t in english_templates(TASK):
        assert not any(s in wording(t.prompt) for s in PAPER_SENTENCES), t.id


def test_some_drawable_templates_show_options_and_some_do_not():
    with_options = [t.id for t in DRAWABLE if "choices | options" in t.prompt]
    assert 0 < len(with_options) < len(DRAWABLE) // 2


def test_ids_resolve_to_this_task_and_the_draw_never_picks_an_eval_template():
    for t in english_templates(TASK):
        assert template_by_id(t.id) == t
    drawn = collections.Counter(choose_template(TASK, "en", f"okvqa:train:{i}", seed=0).id for i in range(1500))
    assert set(drawn) == {t.id for t in DRAWABLE}
    assert EVAL and not {t.id for t in EVAL} & set(drawn)


# ---------------------------------------------------------------- drawable templates on training records


def test_fixture_has_open_and_multiple_choice_records(records):
    assert records["okvqa:train"] and all("choices" not in r for r in records["okvqa:train"])
    assert records["aokvqa:train"] and all(len(r["choices"]) == 4 for r in records["aokvqa:train"])
    assert records["scienceqa:train"] and all(r["choices"] for r in records["scienceqa:train"])


@pytest.mark.parametrize("template", DRAWABLE, ids=lambda t: t.id)
def test_every_training_record_renders_with_the_question_and_the_answer_as_target(template, records):
    for record in training_records(records):
        user, assistant = template.render(record)
        assert user["role"] == "user" and assistant == {"role": "assistant", "content": record["answer"]}
        assert record["question"] in user["content"], (template.id, record["id"])
        assert_clean_layout(user["content"], template.id)


@pytest.mark.parametrize("template", [t for t in DRAWABLE if "choices | options" in t.prompt], ids=lambda t: t.id)
def test_templates_with_options_list_every_choice_and_print_nothing_for_open_questions(template, records):
    for record in records["aokvqa:train"]:
        options = "Options: " + ", ".join(f"({letter}) {c}" for letter, c in zip("abcd", record["choices"]))
        assert options in template.render(record)[0]["content"], record["id"]
    for record in records["okvqa:train"]:
        assert "Options" not in template.render(record)[0]["content"], record["id"]


def test_drawable_templates_never_show_scienceqa_hints(records):
    hinted = [r for r in records["scienceqa:train"] if r["hint"]]
    assert hinted
    for template, record in itertools.product(DRAWABLE, hinted):
        assert record["hint"] not in template.render(record)[0]["content"]


# ---------------------------------------------------------------- multiple-choice evaluation


def test_the_multiple_choice_prompt_gives_question_then_options_then_the_instruction(records):
    template = template_by_id("kvqa_eval_multiple_choice")
    assert not template.draw and template.brevity == "none"
    record = records["aokvqa:val"][0]
    options = ", ".join(f"({letter}) {c}" for letter, c in zip("abcd", record["choices"]))
    assert template.render(record) == [
        {"role": "user", "content": f"<image>\n{record['question']}\nOptions: {options}\nAnswer with the option's text."},
        {"role": "assistant", "content": record["answer"]},
    ]


def test_every_held_out_multiple_choice_record_renders_with_its_choices(records):
    template = template_by_id("kvqa_eval_multiple_choice")
    evaluated = multiple_choice_records(records)
    assert {r["dataset"] for r in evaluated} == {"aokvqa", "scienceqa"}
    for record in evaluated:
        user, assistant = template.render(record)
        assert assistant["content"] == record["answer"] == record["choices"][record["answer_index"]]
        assert f"\n{record['question']}\nOptions: (a) {record['choices'][0]}, (b) " in user["content"], record["id"]
        assert_clean_layout(user["content"], template.id)


def test_scienceqa_context_is_shown_only_when_the_problem_has_a_hint(records):
    template = template_by_id("kvqa_eval_multiple_choice")
    problems = records["scienceqa:val"] + records["scienceqa:test"]
    assert {bool(r["hint"]) for r in problems} == {True, False}  # the fixture has both kinds
    for record in problems:
        prompt = template.render(record)[0]["content"]
        if record["hint"]:
            assert prompt.startswith(f"<image>\nContext: {record['hint']}\n{record['question']}\n"), record["id"]
        else:
            assert "Context" not in prompt and prompt.startswith(f"<image>\n{record['question']}\n"), record["id"]


def test_a_record_without_an_answer_cannot_become_a_training_conversation(records):
    record = {**records["aokvqa:val"][0], "answer": None}
    with pytest.raises(TemplateError, match="kvqa_eval_multiple_choice.*None fields: \\['answer'\\]"):
        template_by_id("kvqa_eval_multiple_choice").render(record)
