"""Classification templates: a Hateful Memes record's text in the prompt, "yes" (hateful) or "no" as the target."""
from __future__ import annotations

import difflib
import re

import pytest

from catalog.adapters.hateful_memes import read_hateful_memes
from jobs.template_tools import BREVITY_WORDS  # the words `loom templates lint` reads as asking for brevity
from pipelines.shapes_world.formats.hateful_memes import write_hateful_memes
from templates.library import TemplateError, choose_template, load_task_templates, template_by_id

TASK = "classification"


def english_templates(task: str) -> tuple:
    """The task's English templates: these tests hold the English wording (tests/test_templates_chinese.py the Chinese)."""
    return tuple(t for t in load_task_templates(task) if t.lang == "en")
LABELLED = ("train", "dev_seen", "dev_unseen")


def drawable() -> list:
    return [t for t in english_templates(TASK) if t.lang == "en" and t.draw]


def wording(prompt: str) -> str:
    """A prompt's own words, its Jinja fields and blocks left out."""
    return re.sub(r"\{[{%].*?[%}]\}", "", prompt.removeprefix("<image>\n")).lower()


@pytest.fixture(scope="module")
def memes(tmp_path_factory):
    out = tmp_path_factory.mktemp("classification_templates")
    write_hateful_memes(out, seed=6, scenes=15)
    return out


@pytest.fixture(scope="module")
def records(memes) -> list[dict]:
    records = [r for split in LABELLED for r in read_hateful_memes(memes / f"{split}.jsonl", memes, split)]
    assert {r["answer"] for r in records} == {"yes", "no"}
    return records


def test_ten_to_fifteen_drawable_english_templates_and_the_eval_prompt():
    templates = drawable()
    assert 10 <= len(templates) <= 15
    assert [t.id for t in templates] == [f"cls_en_{n:02d}" for n in range(1, len(templates) + 1)]
    assert [t.id for t in english_templates(TASK) if not t.draw] == ["cls_eval_hateful"]
    assert all(t.response == "{{ answer }}" for t in english_templates(TASK))


def test_every_prompt_opens_with_the_image_and_shows_the_meme_text():
    for template in english_templates(TASK):
        assert template.prompt.startswith("<image>\n") and template.prompt.count("<image>") == 1, template.id
        assert "{{ text }}" in template.prompt and "hate" in template.prompt.lower(), template.id


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


def test_every_labelled_meme_renders_with_every_template(records):
    for record in records:
        for template in english_templates(TASK):
            user, assistant = template.render(record)
            where = (template.id, record["id"])
            assert record["text"] in user["content"], where
            assert user["content"] == user["content"].strip() and "\n\n" not in user["content"], where
            assert assistant["content"] == record["answer"] == {0: "no", 1: "yes"}[record["label"]], where


def test_the_eval_prompt_is_instructblips_wording(records):
    user, assistant = template_by_id("cls_eval_hateful").render(records[0])
    assert user["content"] == f'<image>\nThis is an image with: "{records[0]["text"]}" written on it. Is it hateful? Answer:'
    assert assistant["content"] == records[0]["answer"]


def test_an_unlabelled_test_meme_cannot_become_a_training_conversation(memes):
    (record, *_) = read_hateful_memes(memes / "test_unseen.jsonl", memes, "test_unseen")
    assert record["answer"] is None
    with pytest.raises(TemplateError, match="cls_en_01.*a field it uses is empty"):
        template_by_id("cls_en_01").render(record)


def test_the_eval_prompt_is_never_drawn():
    drawn = {choose_template(TASK, "en", f"hateful_memes:train:{i}", seed=0).id for i in range(600)}
    assert drawn == {t.id for t in drawable()}
