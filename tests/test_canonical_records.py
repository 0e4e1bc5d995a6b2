"""The canonical record's schema (catalog/records.py): every adapter builds its records through it, a record
that lacks a field its task needs is refused naming the field, and `loom templates lint` refuses a template
that prints a field its task's records do not have."""
from __future__ import annotations

import json

import pytest

from catalog.cards import TASKS, load_cards, select_cards
from catalog.records import HEADER, TASK_FIELDS, RecordError, canonical_record, record_id, template_fields
from jobs.cli import main
from pipelines.shapes_world.formats.samples import SAMPLES, sample_records
from templates.library import use_template_folders

IMAGE = {"path": "/data/coco/val2014/COCO_val2014_000000000042.jpg", "width": 640, "height": 480}


def test_a_record_is_its_header_its_image_and_its_task_s_fields():
    record = canonical_record("vqa", id=record_id("vqav2", "val", 7), dataset="vqav2", split="val", lang="en",
                              image=IMAGE, question="What colour is the bus?", answer="red", answers=["red"] * 10)
    assert record == {"id": "vqav2:val:7", "dataset": "vqav2", "task": "vqa", "split": "val", "lang": "en",
                      "image": IMAGE, "question": "What colour is the bus?", "answer": "red", "answers": ["red"] * 10}


def test_a_record_missing_a_field_its_task_needs_is_refused_naming_the_field_and_the_task_s_fields():
    with pytest.raises(RecordError) as refused:
        canonical_record("vqa", id="mine:train:3", dataset="mine", split="train", lang="en", image=IMAGE,
                         question="How many circles?")
    assert str(refused.value).startswith("record 'mine:train:3': lacks field(s) 'answer'; a vqa record has "
                                         "question, answer, and carries ")


def test_a_split_without_answers_gives_its_answer_as_none_not_by_leaving_it_out():
    record = canonical_record("vqa", id="vqav2:test:1", dataset="vqav2", split="test", lang="en", image=IMAGE,
                              question="Is it raining?", answer=None)
    assert record["answer"] is None


def test_a_field_the_task_does_not_know_is_refused():
    with pytest.raises(RecordError, match=r"has field\(s\) 'question' a classification record does not carry; "
                                          r"a classification record has text, answer"):
        canonical_record("classification", id="memes:val:1", dataset="memes", split="val", lang="en", image=IMAGE,
                         text="look at this", answer="no", question="Is it hateful?")


def test_a_record_has_an_image_or_a_video_s_frames_never_neither():
    with pytest.raises(RecordError, match="has no image"):
        canonical_record("captioning", id="a:train:1", dataset="a", split="train", lang="en", caption="a red square")
    frames = [dict(IMAGE)] * 4
    video = canonical_record("video_qa", id="v:val:1", dataset="v", split="val", lang="en", frames=frames,
                             question="what moves?", answer="circle")
    assert video["frames"] == frames and "image" not in video


def test_every_dataset_card_s_adapter_builds_records_of_its_task_s_schema(tmp_path):
    cards = select_cards(load_cards(), kind="dataset")
    assert set(TASK_FIELDS) == set(TASKS)
    for name in sorted(set(cards) & set(SAMPLES)):
        records = sample_records(name, tmp_path / name)
        assert records, name
        for record in records:
            spec = TASK_FIELDS[record["task"]]
            assert record["task"] in cards[name]["tasks"]
            assert set(spec.fields) <= set(record), (name, record["id"])
            assert set(record) - {*HEADER, "image", "frames"} <= spec.known, (name, sorted(record))


def test_template_fields_are_those_every_record_has_then_those_some_datasets_have():
    assert template_fields("visual_reasoning") == ("answer", "question", "caption", "choices")
    assert template_fields("captioning_reading") == ("caption", "ocr_tokens")


@pytest.fixture
def user_templates():
    yield
    use_template_folders([])


def test_lint_refuses_a_template_printing_a_field_its_task_does_not_have(tmp_path, capsys, user_templates):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "vqa.yaml").write_text('task: vqa\nresponse: "{{ answer }}"\ntemplates:\n'
                                   '  - {id: mine_vqa_01, lang: en, brevity: none, '
                                   'prompt: "<image>\\n{{ caption }} {{ question }}"}\n', encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"templates": {"paths": [str(mine)]}}), encoding="utf-8")
    assert main(["templates", "lint", "--config", str(config)]) == 1
    assert ("problem: vqa: template mine_vqa_01 uses field(s) caption that a vqa record does not have; its fields: "
            "question, answer") in capsys.readouterr().out
