"""Records that are not one image and one question: a video's frames, and conversations that take no template."""
from __future__ import annotations

import pytest

from pipelines.render import render_record
from pipelines.shapes_world.formats.samples import sample_records
from templates.library import load_task_templates


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return sample_records("msrvtt_qa", tmp_path_factory.mktemp("video"), scenes=3)


def test_each_frame_is_an_image_of_the_instruction(records):
    for record in records:
        row = render_record(record, seed=0)
        assert [image["path"] for image in row["images"]] == [frame["path"] for frame in record["frames"]]
        user = row["messages"][0]["content"]
        assert user.startswith("<image>" * 4 + "\n") and user.count("<image>") == 4
        assert record["question"][1:] in user and row["messages"][1]["content"] == record["answer"]


def test_every_video_template_renders_every_record(records):
    for template in load_task_templates("video_qa"):
        for record in records:
            assert row_ok(render_record(record, seed=0, template_id=template.id), record)


def row_ok(row, record):
    return row["template_id"].startswith(("vid_en_", "vid_zh_")) and row["messages"][1]["content"] == record["answer"]


def test_a_llava_conversation_passes_through_without_a_template(tmp_path):
    for record in sample_records("llava_detail", tmp_path, scenes=3):
        row = render_record(record, seed=0)
        assert (row["template_id"], row["brevity"]) == ("native", "none")
        assert row["messages"] == record["messages"] and row["messages"][0]["content"].startswith("<image>\n")
