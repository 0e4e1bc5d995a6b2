"""Question-generation templates: the answer in the prompt, the source question as the target, for all three VQG sets."""
from __future__ import annotations

import difflib
import re

import pytest

from catalog.adapters.question_generation import read_vqg_aokvqa, read_vqg_okvqa, read_vqg_vqav2
from jobs.template_tools import BREVITY_WORDS  # the words `loom templates lint` reads as asking for brevity
from pipelines.shapes_world import write_demo_data
from pipelines.shapes_world.formats.aokvqa import write_aokvqa
from pipelines.shapes_world.formats.okvqa import write_okvqa
from templates.library import choose_template, load_task_templates

TASK = "question_generation"


def english_templates(task: str) -> tuple:
    """The task's English templates: these tests hold the English wording (tests/test_templates_chinese.py the Chinese)."""
    return tuple(t for t in load_task_templates(task) if t.lang == "en")


def drawable() -> list:
    return [t for t in english_templates(TASK) if t.lang == "en" and t.draw]


def wording(prompt: str) -> str:
    """A prompt's own words, its Jinja fields and blocks left out."""
    return re.sub(r"\{[{%].*?[%}]\}", "", prompt.removeprefix("<image>\n")).lower()


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("vqg_templates")
    write_demo_data(out, seed=5, pair_scenes=0, train_scenes=6, val_scenes=0, port=8000)
    okvqa = write_okvqa(out, seed=5, scenes=6)["train2014"]
    aokvqa = write_aokvqa(out, seed=5, scenes=6)
    by_dataset = {
        "vqg_vqav2": read_vqg_vqav2(out / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json",
                                    out / "vqav2" / "v2_mscoco_train2014_annotations.json", out / "coco" / "train2014",
                                    "train"),
        "vqg_okvqa": read_vqg_okvqa(okvqa["questions_file"], okvqa["annotations_file"], okvqa["images"], "train"),
        # A-OKVQA's image root holds {split}2017/; its test file has no answers, so it gives no records.
        "vqg_aokvqa": read_vqg_aokvqa(aokvqa["train"]["file"], out / "coco", "train")
        + read_vqg_aokvqa(aokvqa["val"]["file"], out / "coco", "val"),
    }
    assert all(by_dataset.values()), {name: len(r) for name, r in by_dataset.items()}
    return by_dataset


def test_ten_to_fifteen_drawable_english_templates_with_numbered_ids():
    templates = drawable()
    assert 10 <= len(templates) <= 15
    assert [t.id for t in templates] == [f"qg_en_{n:02d}" for n in range(1, len(templates) + 1)]
    assert all(t.response == "{{ question }}" for t in templates)


def test_every_prompt_opens_with_the_image_and_gives_the_answer():
    for template in english_templates(TASK):
        assert template.prompt.startswith("<image>\n") and template.prompt.count("<image>") == 1, template.id
        assert "{{ answer }}" in template.prompt, template.id
        assert "{{ question }}" not in template.prompt, f"{template.id} shows the target in the prompt"


def test_brevity_is_short_exactly_where_the_wording_asks_for_a_short_question():
    templates = drawable()
    for template in templates:
        says_short = any(word in template.prompt.lower() for word in BREVITY_WORDS)
        assert says_short == (template.brevity == "short"), template.id
        assert template.brevity in ("short", "none"), template.id
    shorts = sum(t.brevity == "short" for t in templates)
    assert 0 < shorts <= len(templates) // 3  # questions are sentences: only a few ask for a short one


def test_no_two_templates_are_nearly_the_same():
    texts = {t.id: wording(t.prompt) for t in drawable()}
    for a in texts:
        for b in texts:
            if a < b:
                assert difflib.SequenceMatcher(None, texts[a], texts[b]).ratio() < 0.75, (a, b)


@pytest.mark.parametrize("dataset", ["vqg_vqav2", "vqg_okvqa", "vqg_aokvqa"])
def test_every_record_renders_with_every_template(records, dataset):
    for record in records[dataset]:
        for template in drawable():
            user, assistant = template.render(record)
            assert user["role"] == "user" and assistant["role"] == "assistant"
            assert record["answer"] in user["content"], (template.id, record["id"])
            assert record["question"] not in user["content"], (template.id, record["id"])
            assert user["content"] == user["content"].strip(), (template.id, record["id"])
            assert assistant["content"] == record["question"], (template.id, record["id"])


def test_the_draw_spreads_records_over_all_templates(records):
    ids = {choose_template(TASK, "en", record["id"], seed=0).id for dataset in records.values() for record in dataset}
    assert len(ids) > len(drawable()) // 2
