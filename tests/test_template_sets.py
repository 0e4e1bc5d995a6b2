"""render.template_set: instructblip_paper draws from InstructBLIP's own Appendix Table 5 templates, word
for word, where the table covers the task and language; everything else keeps Loom's own templates."""
from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from jobs.config import ConfigError
from jobs.render import render_settings, run_render
from pipelines.shapes_world.formats.vizwiz import write_vizwiz
from templates.library import set_templates, template_by_id, template_set, template_sets

PAPER = "instructblip_paper"


def test_the_paper_set_has_the_tables_13_caption_10_vqa_and_6_question_generation_templates():
    assert PAPER in template_sets()
    counts = {task: len(set_templates(PAPER, task)) for task in ("captioning", "vqa", "question_generation")}
    assert counts == {"captioning": 13, "vqa": 10, "question_generation": 6}
    assert set(template_set(PAPER)["covers"]) == {"captioning", "captioning_reading", "vqa", "knowledge_vqa",
                                                  "reading_vqa", "question_generation"}


def test_nine_of_the_caption_and_six_of_the_vqa_templates_ask_for_brevity_as_in_the_paper():
    short = {task: sum(t.brevity == "short" for t in set_templates(PAPER, task)) for task in ("captioning", "vqa")}
    assert short == {"captioning": 9, "vqa": 6}
    wording = ("short", "briefly", "few words", "three words", "as short as")
    for task in ("captioning", "vqa", "question_generation"):
        for t in set_templates(PAPER, task):
            text = re.sub(r"{[{%].*?[}%]}", "", t.prompt).lower()
            assert any(w in text for w in wording) == (t.brevity == "short"), t.id


def test_the_wording_is_the_papers_letter_for_letter():
    rendered = {t.id: t.render({"question": "Q?", "answer": "A", "caption": "c"})[0]["content"]
                for task in ("captioning", "vqa", "question_generation") for t in set_templates(PAPER, task)}
    assert rendered["ibp_cap_01"] == "<image>A short image caption:"
    assert rendered["ibp_cap_03"] == "<image>A photo of"
    assert rendered["ibp_vqa_03"] == "<image>Q? A short answer to the question is"
    assert rendered["ibp_vqa_10"] == '<image>The question "Q?" can be answered using the image. A short answer is'
    assert rendered["ibp_qg_06"] == ("<image>Taking the image into account, generate an question that has the "
                                     "answer: A. Question:")
    assert template_by_id("ibp_vqa_06").brevity == "short"


@pytest.fixture(scope="module")
def vizwiz(tmp_path_factory):
    return write_vizwiz(tmp_path_factory.mktemp("vizwiz"), seed=7, scenes=8)


def entry(vizwiz, **extra):
    return {"card": "vizwiz", "annotation_file": vizwiz["files"]["train"],
            "image_root": vizwiz["image_folders"]["train"], "split": "train", **extra}


def test_a_render_with_the_paper_set_draws_only_its_templates_and_chinese_keeps_loom_s(vizwiz, tmp_path):
    config = {"render": {"template_set": PAPER, "datasets": [entry(vizwiz), entry(vizwiz, lang="zh")]}}
    manifest = run_render(config, tmp_path, log=lambda *_: None)
    english, chinese = (pq.read_table(tmp_path / "render" / f, columns=["template_id"])["template_id"].to_pylist()
                        for f in manifest["files"])
    assert english and all(t.startswith("ibp_vqa_") for t in english)
    assert chinese and all(t.startswith("vqa_zh_") for t in chinese)


def test_an_unknown_template_set_is_refused_with_the_sets_there_are(vizwiz):
    with pytest.raises(ConfigError, match="render.template_set: 'llava_paper'; expected one of default, instructblip_paper"):
        render_settings({"render": {"template_set": "llava_paper", "datasets": [entry(vizwiz)]}})
