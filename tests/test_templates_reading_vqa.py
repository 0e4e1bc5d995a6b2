"""Reading-comprehension VQA templates: OCR-VQA and TextVQA records rendered through every template."""
from __future__ import annotations

import collections
import difflib
import itertools
import re

import pytest

from catalog.adapters.ocrvqa import read_ocrvqa
from catalog.adapters.textvqa import read_textvqa
from pipelines.shapes_world.formats.ocrvqa import write_ocrvqa
from pipelines.shapes_world.formats.textvqa import write_textvqa
from templates.library import OCR_TOKENS_SHOWN, TemplateError, choose_template, load_task_templates, template_by_id

TASK = "reading_vqa"


def english_templates(task: str) -> tuple:
    """The task's English templates: these tests hold the English wording (tests/test_templates_chinese.py the Chinese)."""
    return tuple(t for t in load_task_templates(task) if t.lang == "en")
SEED = 6
SHORT_WORDING = ("short", "brief", "concise", "succinct", "single word", "one word", "few words", "three words")
# The skill this task teaches: every drawable prompt points at the text in the image.
READING_WORDING = ("text", "written", "writing", "words", "lettering", "read")
PAPER_SENTENCES = ("a short answer to the question is", "respond to this question with a short answer",
                   "provide your answer as short as possible", "what is the answer to the following question",
                   "can be answered using the image")
OCR = "ocr_tokens | ocr"
DRAWABLE = [t for t in english_templates(TASK) if t.draw]
EVAL = [t for t in english_templates(TASK) if not t.draw]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, list[dict]]:
    """Canonical records per dataset and split, read by the adapters from the shapes-world files."""
    out = tmp_path_factory.mktemp("reading_vqa")
    ocrvqa = write_ocrvqa(out / "ocrvqa", seed=SEED, scenes=10)
    textvqa = write_textvqa(out / "textvqa", seed=SEED, scenes=6)

    def textvqa_split(split):
        return read_textvqa(textvqa["files"][split], textvqa["images"][split], split, ocr_file=textvqa["ocr_files"][split])

    return {
        "ocrvqa:train": read_ocrvqa(ocrvqa["file"], ocrvqa["images"], "train"),
        **{f"textvqa:{split}": textvqa_split(split) for split in ("train", "val", "test")},
    }


def wording(prompt: str) -> str:
    """A prompt's own words: Jinja and the image token removed."""
    return re.sub(r"{[{%].*?[}%]}", " ", prompt).replace("<image>", "").strip().lower()


def assert_clean_layout(text: str, template_id: str):
    assert text.startswith("<image>\n") and text.count("<image>") == 1, template_id
    assert "\n\n" not in text and "  " not in text and not re.search(r"\s$|[ \t]\n", text), (template_id, text)


def ocr_line(record: dict) -> str:
    return "OCR tokens: " + ", ".join(record["ocr_tokens"][:OCR_TOKENS_SHOWN])


# ---------------------------------------------------------------- the set


def test_ten_to_fifteen_drawable_english_templates_with_numbered_ids():
    assert 10 <= len(DRAWABLE) <= 15
    assert all(t.lang == "en" and t.task == TASK for t in english_templates(TASK))
    assert [t.id for t in DRAWABLE] == [f"rvqa_en_{i:02d}" for i in range(1, len(DRAWABLE) + 1)]


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


def test_most_drawable_prompts_append_the_ocr_tokens():
    with_ocr = [t for t in DRAWABLE if OCR in t.prompt]
    assert len(with_ocr) > 0.7 * len(DRAWABLE) and len(with_ocr) < len(DRAWABLE)


def test_every_drawable_prompt_is_about_reading_the_image():
    for t in DRAWABLE:
        assert any(w in wording(t.prompt) for w in READING_WORDING), t.id


def test_no_two_templates_are_nearly_the_same_nor_copied_from_the_paper():
    for a, b in itertools.combinations(english_templates(TASK), 2):
        assert difflib.SequenceMatcher(None, wording(a.prompt), wording(b.prompt)).ratio() < 0.75, (a.id, b.id)
    for t in english_templates(TASK):
        assert not any(s in wording(t.prompt) for s in PAPER_SENTENCES), t.id


def test_ids_resolve_to_this_task_and_the_draw_never_picks_an_eval_template():
    for t in english_templates(TASK):
        assert template_by_id(t.id) == t
    drawn = collections.Counter(choose_template(TASK, "en", f"ocrvqa:train:{i}", seed=0).id for i in range(1500))
    assert set(drawn) == {t.id for t in DRAWABLE}
    assert EVAL and not {t.id for t in EVAL} & set(drawn)


# ---------------------------------------------------------------- drawable templates on training records


def test_fixture_has_records_with_and_without_ocr_tokens(records):
    assert records["ocrvqa:train"] and all("ocr_tokens" not in r for r in records["ocrvqa:train"])
    assert records["textvqa:train"] and all(r["ocr_tokens"] for r in records["textvqa:train"])


@pytest.mark.parametrize("template", DRAWABLE, ids=lambda t: t.id)
def test_every_training_record_renders_with_the_question_and_the_answer_as_target(template, records):
    for record in records["ocrvqa:train"] + records["textvqa:train"]:
        user, assistant = template.render(record)
        assert user["role"] == "user" and assistant == {"role": "assistant", "content": record["answer"]}
        assert record["question"] in user["content"], (template.id, record["id"])
        assert_clean_layout(user["content"], template.id)


@pytest.mark.parametrize("template", [t for t in DRAWABLE if OCR in t.prompt], ids=lambda t: t.id)
def test_ocr_tokens_are_shown_for_scene_text_and_nothing_is_shown_for_book_covers(template, records):
    for record in records["textvqa:train"]:
        prompt = template.render(record)[0]["content"]
        assert ocr_line(record) in prompt.splitlines(), (template.id, record["id"])
    for record in records["ocrvqa:train"]:
        assert "OCR" not in template.render(record)[0]["content"], (template.id, record["id"])


def test_only_the_first_thirty_ocr_tokens_are_shown(records):
    record = {**records["textvqa:train"][0], "ocr_tokens": [f"w{i}" for i in range(40)]}
    prompt = template_by_id("rvqa_en_01").render(record)[0]["content"]
    assert prompt.endswith("OCR tokens: " + ", ".join(f"w{i}" for i in range(30)))


# ---------------------------------------------------------------- TextVQA evaluation


def test_the_eval_prompt_gives_ocr_tokens_then_asks_for_a_short_answer(records):
    template = template_by_id("rvqa_eval_short_answer")
    assert not template.draw and template.brevity == "short"
    record = records["textvqa:val"][0]
    assert template.render(record) == [
        {"role": "user", "content": f"<image>\n{ocr_line(record)}\nQuestion: {record['question']} Short answer:"},
        {"role": "assistant", "content": record["answer"]},
    ]


def test_every_textvqa_val_record_renders_with_the_eval_prompt(records):
    template = template_by_id("rvqa_eval_short_answer")
    assert records["textvqa:val"]
    for record in records["textvqa:val"]:
        user, assistant = template.render(record)
        assert assistant["content"] == record["answer"]
        assert record["question"] in user["content"] and ocr_line(record) in user["content"]
        assert_clean_layout(user["content"], template.id)


def test_textvqa_test_records_have_no_answer_to_train_on(records):
    assert records["textvqa:test"]
    for template in english_templates(TASK):
        with pytest.raises(TemplateError, match=f"{template.id}.*'answer'"):
            template.render(records["textvqa:test"][0])
