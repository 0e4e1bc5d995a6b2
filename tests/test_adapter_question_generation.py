"""Question generation (vqg_vqav2, vqg_okvqa, vqg_aokvqa): VQA records turned around, from each source's own files."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from pathlib import Path

import pytest

from catalog.adapters import question_generation
from catalog.adapters.aokvqa import read_aokvqa
from catalog.adapters.okvqa import read_okvqa
from catalog.adapters.question_generation import (
    read_question_generation,
    read_vqg_aokvqa,
    read_vqg_okvqa,
    read_vqg_vqav2,
)
from catalog.adapters.vqav2 import read_vqav2
from catalog.cards import get_card
from pipelines.shapes_world import write_demo_data
from pipelines.shapes_world.formats.aokvqa import write_aokvqa
from pipelines.shapes_world.formats.okvqa import write_okvqa


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vqg")
    write_demo_data(out, seed=7, pair_scenes=0, train_scenes=8, val_scenes=0, port=8000)
    return {
        "out": out,
        "vqav2": (
            out / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json",
            out / "vqav2" / "v2_mscoco_train2014_annotations.json",
            out / "coco" / "train2014",
        ),
        "okvqa": write_okvqa(out, seed=7, scenes=8),
        "aokvqa": write_aokvqa(out, seed=7, scenes=8),
    }


def okvqa_files(world, subtype: str = "train2014") -> tuple[Path, Path, Path]:
    written = world["okvqa"][subtype]
    return Path(written["questions_file"]), Path(written["annotations_file"]), Path(written["images"])


def test_vqg_vqav2_asks_for_the_question_given_multiple_choice_answer(world):
    questions, annotations, images = world["vqav2"]
    records = read_vqg_vqav2(questions, annotations, images, "train")
    native_questions = json.loads(questions.read_text())["questions"]
    native_answers = {a["question_id"]: a for a in json.loads(annotations.read_text())["annotations"]}
    assert len(records) == len(native_questions) > 8
    for record, question in zip(records, native_questions):
        assert record["id"] == f"vqg_vqav2:train:{question['question_id']}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == (
            "vqg_vqav2", "question_generation", "train", "en")
        # The target is the question; the answer is what the prompt gives (never the other way round).
        assert record["question"] == question["question"] and record["question"].endswith("?")
        assert record["answer"] == native_answers[question["question_id"]]["multiple_choice_answer"]
        assert Path(record["image"]["path"]).name == f"COCO_train2014_{question['image_id']:012d}.jpg"


def test_vqg_okvqa_gives_the_most_common_human_answer(world):
    questions, annotations, images = okvqa_files(world)
    records = read_vqg_okvqa(questions, annotations, images, "train")
    native_questions = json.loads(questions.read_text())["questions"]
    native_answers = {a["question_id"]: a for a in json.loads(annotations.read_text())["annotations"]}
    assert len(records) == len(native_questions)
    for record, question in zip(records, native_questions):
        human = Counter(a["answer"] for a in native_answers[question["question_id"]]["answers"])
        assert record["id"] == f"vqg_okvqa:train:{question['question_id']}"
        assert (record["dataset"], record["task"]) == ("vqg_okvqa", "question_generation")
        assert record["question"] == question["question"]
        assert human[record["answer"]] == max(human.values())
    # Fruit questions are answered with a fruit, side questions with a number: the pair stays together.
    for record in records:
        if record["question"].startswith("How many sides"):
            assert record["answer"] in {"3", "4", "6"}


def test_vqg_aokvqa_gives_the_correct_choice(world):
    path = Path(world["aokvqa"]["train"]["file"])
    records = read_vqg_aokvqa(path, world["out"] / "coco", "train")
    native = json.loads(path.read_text())
    assert len(records) == len(native)
    for record, row in zip(records, native):
        assert record["id"] == f"vqg_aokvqa:train:{row['question_id']}"
        assert (record["dataset"], record["task"]) == ("vqg_aokvqa", "question_generation")
        assert record["question"] == row["question"]
        assert record["answer"] == row["choices"][row["correct_choice_idx"]]
        assert Path(record["image"]["path"]).name == f"{row['image_id']:012d}.jpg"


def test_a_split_without_answers_gives_no_examples(world):
    assert read_vqg_aokvqa(Path(world["aokvqa"]["test"]["file"]), world["out"] / "coco", "test") == []
    questions, _, images = okvqa_files(world, "val2014")
    assert read_vqg_okvqa(questions, None, images, "val") == []
    questions, _, images = world["vqav2"]
    assert read_vqg_vqav2(questions, None, images, "test") == []


def test_unanswered_records_are_skipped_and_the_rest_kept_in_order(world):
    questions, annotations, images = okvqa_files(world)
    source = read_okvqa(questions, annotations, images, "train")
    source[1] = dict(source[1], answer=None, answers=None)
    records = read_question_generation(source, "vqg_okvqa")
    assert [r["source_id"] for r in records] == [s["id"] for i, s in enumerate(source) if i != 1]
    assert all(r["image"] == s["image"] for r, s in zip(records, source[:1] + source[2:]))


def test_readers_take_the_source_readers_arguments(world):
    questions, annotations, images = okvqa_files(world, "val2014")
    flat = world["out"] / "okvqa-flat"
    flat.mkdir(exist_ok=True)
    for path in images.glob("*.jpg"):
        (flat / f"{int(path.stem.rsplit('_', 1)[1])}.jpg").write_bytes(path.read_bytes())
    records = read_vqg_okvqa(questions, annotations, flat, "val", image_name="{image_id}.jpg")
    source = read_okvqa(questions, annotations, flat, "val", image_name="{image_id}.jpg")
    assert [r["source_id"] for r in records] == [s["id"] for s in source]
    aokvqa = read_aokvqa(Path(world["aokvqa"]["val"]["file"]), world["out"] / "coco", "val")
    assert len(read_vqg_aokvqa(Path(world["aokvqa"]["val"]["file"]), world["out"] / "coco", "val")) == len(aokvqa)
    assert len(read_vqav2(*world["vqav2"], "train")) == len(read_vqg_vqav2(*world["vqav2"], "train"))


def test_a_record_that_is_not_canonical_vqa_is_named():
    record = {"id": "okvqa:train:5", "dataset": "okvqa", "split": "train", "image": {}, "answer": "apple"}
    with pytest.raises(ValueError, match=r"source_records\[0\]: missing field 'question'"):
        read_question_generation([record], "vqg_okvqa")


def test_an_id_that_does_not_name_its_dataset_and_split_is_named():
    record = {"id": "okvqa:val:5", "dataset": "okvqa", "split": "train", "image": {}, "question": "Why?",
              "answer": "because"}
    with pytest.raises(ValueError, match=r"source_records\[0\]: id 'okvqa:val:5' does not start with 'okvqa:train:'"):
        read_question_generation([record], "vqg_okvqa")


def test_each_vqg_card_names_its_reader():
    expected = {"vqg_vqav2": read_vqg_vqav2, "vqg_okvqa": read_vqg_okvqa, "vqg_aokvqa": read_vqg_aokvqa}
    for name, function in expected.items():
        card = get_card(name)
        module, _, attribute = card["adapter"].rpartition(".")
        assert importlib.import_module(module) is question_generation
        assert getattr(importlib.import_module(module), attribute) is function
        assert card["tasks"] == ["question_generation"]
