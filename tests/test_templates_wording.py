"""The wording of task templates as a reader sees it rendered: punctuation, case and headers (issue 16, item 6)."""
from __future__ import annotations

import re

import pytest

from catalog.cards import TASKS
from templates.library import TASKS_DIR, TemplateError, load_task_templates, template_by_id


def prompt_of(template_id: str, **record) -> str:
    return template_by_id(template_id).render({"id": "t:1", **record})[0]["content"]


def test_each_task_file_is_numbered_as_its_place_among_the_instructblip_task_categories():
    numbers = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        header = path.read_text().splitlines()[0]
        numbers[path.stem] = int(re.search(r"InstructBLIP task (\d+)", header).group(1))
    assert numbers == {task: TASKS.index(task) + 1 for task in numbers}


@pytest.mark.parametrize("template", [t.id for t in load_task_templates("question_generation")])
def test_an_answer_that_ends_in_a_full_stop_is_not_given_a_second_one(template):
    prompt = prompt_of(template, answer="A red car.", question="What is parked by the kerb?")
    assert "A red car." in prompt and ".." not in prompt


@pytest.mark.parametrize("template, sentence", [
    ("qg_en_03", "Here is an answer about the image: red. Ask"),
    ("qg_en_07", "to which the reply is red."),
    ("qg_en_08", "The answer is red. Using"),
])
def test_an_answer_without_a_full_stop_still_ends_its_sentence_with_one(template, sentence):
    assert sentence in prompt_of(template, answer="red", question="What color is the car?")


def test_qg_en_03_reads_the_same_whether_or_not_the_answer_brings_its_full_stop():
    assert prompt_of("qg_en_03", answer="Two dogs.", question="What is on the sofa?") == (
        "<image>\nHere is an answer about the image: Two dogs. Ask the question it responds to.")
    assert prompt_of("qg_en_03", answer="Two dogs", question="What is on the sofa?") == (
        "<image>\nHere is an answer about the image: Two dogs. Ask the question it responds to.")


def test_a_missing_answer_is_still_refused_rather_than_asked_about():
    with pytest.raises(TemplateError, match=r"a field it uses is empty \(None fields: \['answer'\]\)"):
        prompt_of("qg_en_03", answer=None, question="What is on the sofa?")


@pytest.mark.parametrize("template", [t.id for t in load_task_templates("video_qa")])
def test_video_questions_keep_their_case(template):
    question = "Who is Santa Claus talking to?"
    assert question in prompt_of(template, question=question, answer="child")


def test_vr_en_07_asks_for_a_few_words_in_plain_english():
    template = template_by_id("vr_en_07")
    assert template.brevity == "short"
    assert prompt_of("vr_en_07", question="Is the cup to the left of the plate?", answer="yes") == (
        "<image>\nQuestion: Is the cup to the left of the plate?\nAnswer in a few words:")


def test_cls_en_05_gives_the_meme_text_then_asks_for_one_word():
    template = template_by_id("cls_en_05")
    assert template.brevity == "short"
    assert prompt_of("cls_en_05", text="look at them go", answer="no") == (
        "<image>\nThe text on this meme reads: \"look at them go\"\nIs the meme hateful? Answer in one word: yes or no.")
