"""Visual-dialog templates: caption, earlier rounds and the round's question in the prompt, its answer as the target."""
from __future__ import annotations

import difflib
import re

import pytest

from catalog.adapters.visdial import read_visdial
from jobs.template_tools import BREVITY_WORDS  # the words `loom templates lint` reads as asking for brevity
from pipelines.shapes_world.formats.visdial import write_visdial
from templates.library import TemplateError, choose_template, load_task_templates, template_by_id

TASK = "visual_dialog"


def english_templates(task: str) -> tuple:
    """The task's English templates: these tests hold the English wording (tests/test_templates_chinese.py the Chinese)."""
    return tuple(t for t in load_task_templates(task) if t.lang == "en")


def drawable() -> list:
    return [t for t in english_templates(TASK) if t.lang == "en" and t.draw]


def wording(prompt: str) -> str:
    """A prompt's own words, its Jinja fields and blocks left out."""
    return re.sub(r"\{[{%].*?[%}]\}", "", prompt.removeprefix("<image>\n")).lower()


@pytest.fixture(scope="module")
def visdial(tmp_path_factory) -> dict:
    return write_visdial(tmp_path_factory.mktemp("visual_dialog_templates"), seed=8, scenes=9)


@pytest.fixture(scope="module")
def records(visdial) -> list[dict]:
    records = [r for split in ("train", "val")
               for r in read_visdial(visdial["splits"][split]["file"], visdial["image_root"], split)]
    # Test dialogs end on the round to answer, which has no answer: those rounds cannot be rendered.
    test = read_visdial(visdial["splits"]["test"]["file"], visdial["image_root"], "test")
    records += [r for r in test if r["answer"] is not None]
    assert any(r["round"] == 1 for r in records) and any(len(r["history"]) >= 2 for r in records)
    return records


def test_ten_to_fifteen_drawable_english_templates_and_the_eval_prompt():
    templates = drawable()
    assert 10 <= len(templates) <= 15
    assert [t.id for t in templates] == [f"vd_en_{n:02d}" for n in range(1, len(templates) + 1)]
    assert [t.id for t in english_templates(TASK) if not t.draw] == ["vd_eval_short_answer"]
    assert all(t.response == "{{ answer }}" for t in english_templates(TASK))


def test_every_prompt_opens_with_the_image_and_shows_caption_history_and_question():
    for template in english_templates(TASK):
        assert template.prompt.startswith("<image>\n") and template.prompt.count("<image>") == 1, template.id
        for field in ("{{ caption }}", "{{ history | history }}", "{{ question }}"):
            assert field in template.prompt, (template.id, field)


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


def test_every_answered_round_renders_with_every_template(records):
    for record in records:
        for template in english_templates(TASK):
            user, assistant = template.render(record)
            where = (template.id, record["id"])
            content = user["content"]
            assert record["caption"] in content and record["question"] in content, where
            # Earlier rounds in order, one "Q: ... A: ..." line each; the current answer never shows.
            lines = [f"Q: {t['question']} A: {t['answer']}" for t in record["history"]]
            found = [line for line in content.split("\n") if re.fullmatch(r"Q: .* A: .*", line)]
            assert found == lines, where
            assert content == content.strip() and "\n\n" not in content, where
            assert assistant["content"] == record["answer"], where


def test_round_one_shows_no_history(records):
    first = next(r for r in records if r["round"] == 1)
    user, _ = template_by_id("vd_en_02").render(first)
    assert user["content"] == f"<image>\nImage caption: {first['caption']}\nNext question: {first['question']}"


def test_a_later_round_lists_the_earlier_rounds_before_its_question(records):
    third = next(r for r in records if r["round"] == 3)
    user, assistant = template_by_id("vd_en_01").render(third)
    (q1, a1), (q2, a2) = [(t["question"], t["answer"]) for t in third["history"]]
    assert user["content"] == f"<image>\n{third['caption']}\nQ: {q1} A: {a1}\nQ: {q2} A: {a2}\nQ: {third['question']}\nA:"
    assert assistant["content"] == third["answer"]


def test_the_unanswered_last_round_of_a_test_dialog_is_a_named_error(visdial):
    test = read_visdial(visdial["splits"]["test"]["file"], visdial["image_root"], "test")
    unanswered = [r for r in test if r["answer"] is None]
    assert unanswered
    with pytest.raises(TemplateError, match="vd_en_01.*a field it uses is empty"):
        template_by_id("vd_en_01").render(unanswered[0])


def test_the_eval_prompt_is_never_drawn():
    drawn = {choose_template(TASK, "en", f"visdial:val:{i}", seed=0).id for i in range(600)}
    assert drawn == {t.id for t in drawable()}
