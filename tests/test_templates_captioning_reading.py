"""Captioning-with-reading templates: TextCaps records rendered through every template."""
from __future__ import annotations

import collections
import difflib
import itertools
import re

import pytest

from catalog.adapters.textcaps import read_textcaps
from pipelines.shapes_world.formats.textcaps import write_textcaps
from templates.library import TemplateError, choose_template, load_task_templates, template_by_id

TASK = "captioning_reading"


def english_templates(task: str) -> tuple:
    """The task's English templates: these tests hold the English wording (tests/test_templates_chinese.py the Chinese)."""
    return tuple(t for t in load_task_templates(task) if t.lang == "en")
SEED = 8
SHORT_WORDING = ("short", "brief", "concise", "succinct", "single word", "one word", "few words", "three words")
# The caption must mention the image's text, so every prompt asks for it.
TEXT_WORDING = ("text", "written", "writing", "words", "lettering")
# InstructBLIP's captioning templates (Table 5): ours are written anew, not copied.
PAPER_SENTENCES = ("a short image caption", "a short image description", "a photo of", "an image that shows",
                   "write a short description for the image", "write a description for the photo",
                   "provide a description of what is presented in the photo", "briefly describe the content of the image")
OCR = "ocr_tokens | ocr"
TEMPLATES = english_templates(TASK)


@pytest.fixture(scope="module")
def textcaps(tmp_path_factory) -> dict[str, list[dict]]:
    """TextCaps records per split (with Rosetta OCR tokens), read by the adapter from the shapes-world files."""
    out = tmp_path_factory.mktemp("textcaps")
    written = write_textcaps(out, seed=SEED, scenes=6)
    return {split: read_textcaps(written["files"][split], written["images"][split], split,
                                 ocr_file=written["ocr_files"][split])
            for split in ("train", "val", "test")}


def wording(prompt: str) -> str:
    """A prompt's own words: Jinja and the image token removed."""
    return re.sub(r"{[{%].*?[}%]}", " ", prompt).replace("<image>", "").strip().lower()


def assert_clean_layout(text: str, template_id: str):
    assert text.startswith("<image>\n") and text.count("<image>") == 1, template_id
    assert "\n\n" not in text and "  " not in text and not re.search(r"\s$|[ \t]\n", text), (template_id, text)


# ---------------------------------------------------------------- the set


def test_ten_to_fifteen_drawable_english_templates_with_numbered_ids():
    assert all(t.draw and t.lang == "en" and t.task == TASK for t in TEMPLATES)
    assert 10 <= len(TEMPLATES) <= 15
    assert [t.id for t in TEMPLATES] == [f"capread_en_{i:02d}" for i in range(1, len(TEMPLATES) + 1)]


def test_each_prompt_opens_with_the_image_on_its_own_line():
    for t in TEMPLATES:
        assert t.prompt.startswith("<image>\n") and t.prompt.count("<image>") == 1, t.id


def test_brevity_is_short_exactly_where_the_wording_asks_for_it():
    for t in TEMPLATES:
        says_short = any(w in wording(t.prompt) for w in SHORT_WORDING)
        assert says_short == (t.brevity == "short"), t.id


def test_only_a_few_templates_ask_for_a_short_caption():
    brevity = collections.Counter(t.brevity for t in TEMPLATES)
    assert set(brevity) == {"short", "none"} and brevity["short"] <= len(TEMPLATES) // 3


def test_every_prompt_asks_for_the_text_in_the_image():
    for t in TEMPLATES:
        assert any(w in wording(t.prompt) for w in TEXT_WORDING), t.id


def test_most_prompts_append_the_ocr_tokens():
    with_ocr = [t for t in TEMPLATES if OCR in t.prompt]
    assert len(with_ocr) > 0.7 * len(TEMPLATES) and len(with_ocr) < len(TEMPLATES)


def test_no_two_templates_are_nearly_the_same_nor_copied_from_the_paper():
    for a, b in itertools.combinations(TEMPLATES, 2):
        assert difflib.SequenceMatcher(None, wording(a.prompt), wording(b.prompt)).ratio() < 0.75, (a.id, b.id)
    for t in TEMPLATES:
        assert not any(s in wording(t.prompt) for s in PAPER_SENTENCES), t.id


def test_ids_resolve_to_this_task_and_every_template_can_be_drawn():
    for t in TEMPLATES:
        assert template_by_id(t.id) == t
    drawn = {choose_template(TASK, "en", f"textcaps:train:{i}", seed=0).id for i in range(1500)}
    assert drawn == {t.id for t in TEMPLATES}


# ---------------------------------------------------------------- rendering TextCaps records


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.id)
def test_every_captioned_record_renders_with_its_caption_as_the_target(template, textcaps):
    captioned = textcaps["train"] + textcaps["val"]
    assert captioned and all(r["ocr_tokens"] for r in captioned)
    for record in captioned:
        user, assistant = template.render(record)
        assert user["role"] == "user" and assistant == {"role": "assistant", "content": record["caption"]}
        assert_clean_layout(user["content"], template.id)
        # The prompt gives the text, never the caption it is asking for.
        assert record["caption"] not in user["content"]


@pytest.mark.parametrize("template", [t for t in TEMPLATES if OCR in t.prompt], ids=lambda t: t.id)
def test_ocr_tokens_shown_are_the_words_the_caption_quotes(template, textcaps):
    for record in textcaps["train"]:
        prompt_lines = template.render(record)[0]["content"].splitlines()
        assert "OCR tokens: " + ", ".join(record["ocr_tokens"]) in prompt_lines, record["id"]
        assert all(f'"{token}"' in record["caption"] for token in record["ocr_tokens"])


@pytest.mark.parametrize("template", [t for t in TEMPLATES if OCR in t.prompt], ids=lambda t: t.id)
def test_a_record_without_ocr_tokens_gets_no_ocr_line(template, textcaps):
    record = {key: value for key, value in textcaps["train"][0].items() if key != "ocr_tokens"}
    prompt = template.render(record)[0]["content"]
    assert "OCR" not in prompt
    assert_clean_layout(prompt, template.id)


def test_test_split_images_have_no_caption_to_train_on(textcaps):
    assert textcaps["test"] and all(r["caption"] is None for r in textcaps["test"])
    for template in TEMPLATES:
        with pytest.raises(TemplateError, match=f"{template.id}.*'caption'"):
            template.render(textcaps["test"][0])
