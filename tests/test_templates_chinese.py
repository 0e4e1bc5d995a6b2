"""Chinese in every templated task: 10-15 drawable templates per task, brevity marked where the wording
asks for a short answer, and a Chinese record asked in Chinese."""
from __future__ import annotations

import re

import pytest

from templates.library import CONVERSATION_TASKS, choose_template, load_task_templates
from catalog.cards import TASKS

TEMPLATED = [task for task in TASKS if task not in CONVERSATION_TASKS]
SHORT_WORDING = ("简短", "简要", "简洁", "一个词", "几个字", "三个词", "简单回答")


def chinese(task: str) -> list:
    """The Chinese templates drawn for records whose brevity is not `long` (captioning's long ones are
    tests/test_templates.py's)."""
    return [t for t in load_task_templates(task) if t.lang == "zh" and t.draw and t.brevity != "long"]


@pytest.mark.parametrize("task", TEMPLATED)
def test_every_templated_task_has_ten_to_fifteen_chinese_templates_numbered_in_order(task):
    templates = chinese(task)
    assert 10 <= len(templates) <= 15
    prefix = templates[0].id.rsplit("_zh_", 1)[0]
    assert [t.id for t in templates] == [f"{prefix}_zh_{k:02d}" for k in range(1, len(templates) + 1)]


@pytest.mark.parametrize("task", TEMPLATED)
def test_chinese_brevity_is_short_exactly_where_the_wording_asks_for_it(task):
    for t in chinese(task):
        says_short = any(word in t.prompt for word in SHORT_WORDING)
        assert says_short == (t.brevity == "short"), t.id


@pytest.mark.parametrize("task", TEMPLATED)
def test_chinese_prompts_open_with_one_image_and_are_written_in_chinese(task):
    for t in chinese(task):
        assert t.prompt.startswith("<image>\n"), t.id
        wording = re.sub(r"{[{%].*?[}%]}", "", t.prompt)
        words = wording.replace("<image>", "").strip()
        assert wording.count("<image>") == 1 and (not words or re.search(r"[\u4e00-\u9fff]", words)), t.id


@pytest.mark.parametrize("task", TEMPLATED)
def test_a_chinese_record_is_asked_in_chinese(task):
    drawn = {choose_template(task, "zh", f"record-{k}", seed=0).lang for k in range(30)}
    assert drawn == {"zh"}
