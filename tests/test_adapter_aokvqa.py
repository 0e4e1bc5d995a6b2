"""A-OKVQA adapter: aokvqa_v1p0_{split}.json over COCO 2017 images, read back from the shapes world."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.aokvqa import read_aokvqa
from catalog.cards import get_card
from pipelines.shapes_world.draw import nearest_colour_name
from pipelines.shapes_world.formats.aokvqa import FIRST_IMAGE_ID, aokvqa_scene, write_aokvqa
from annotation_files import broken_copy

SEED = 2
# Written out here rather than read from the writer: the fruit each colour calls to mind,
# and every colour a fruit can have when ripe or not.
FRUIT_OF_COLOUR = {"red": "strawberry", "green": "lime", "blue": "blueberry", "yellow": "banana",
                   "purple": "grape", "orange": "tangerine"}
CAN_BE = {"strawberry": {"red"}, "lime": {"green"}, "blueberry": {"blue"}, "banana": {"yellow", "green"},
          "grape": {"purple", "green"}, "tangerine": {"orange"}}
CORNERS = {"triangle": 3, "square": 4, "hexagon": 6}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("aokvqa")
    return out, write_aokvqa(out, seed=SEED, scenes=12)


def annotation_file(world, split: str = "train") -> Path:
    return Path(world[1][split]["file"])


def coco(world) -> Path:
    return world[0] / "coco"


def read(world, split: str = "train") -> list[dict]:
    return read_aokvqa(annotation_file(world, split), coco(world), split)


def scene_of(record: dict, split: str = "train"):
    image_id = int(Path(record["image"]["path"]).stem)
    return aokvqa_scene(SEED, split, image_id - FIRST_IMAGE_ID[split])[0]


def drawn_colour(record: dict, shape) -> str:
    with Image.open(record["image"]["path"]) as image:
        return nearest_colour_name(image.convert("RGB").getpixel(tuple(int(v) for v in shape.centre)))


# ---------------------------------------------------------------- reading


def test_one_record_per_question_with_choices_answers_and_rationales(world):
    records = read(world)
    native = json.loads(annotation_file(world).read_text())
    assert annotation_file(world).name == "aokvqa_v1p0_train.json"
    assert len(records) == len(native) == world[1]["train"]["questions"] > 12
    for record, row in zip(records, native):
        assert record["id"] == f"aokvqa:train:{row['question_id']}" and len(row["question_id"]) == 22
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("aokvqa", "knowledge_vqa", "train", "en")
        assert record["question"] == row["question"]
        assert record["choices"] == row["choices"] and len(set(record["choices"])) == 4
        assert record["answer_index"] == row["correct_choice_idx"]
        assert record["answer"] == row["choices"][row["correct_choice_idx"]]
        assert record["answers"] == row["direct_answers"] and len(record["answers"]) == 10
        assert record["rationales"] == row["rationales"] and len(record["rationales"]) == 3
        assert record["difficult_direct_answer"] is row["difficult_direct_answer"]
        path = Path(record["image"]["path"])
        assert path.is_absolute() and path.parent.name == "train2017" and path.name == f"{row['image_id']:012d}.jpg"


def test_correct_choice_is_true_of_the_scene_and_the_others_false(world):
    asked = Counter()
    for record in read(world):
        scene = scene_of(record)
        question, answer = record["question"], record["answer"]
        wrong = [c for i, c in enumerate(record["choices"]) if i != record["answer_index"]]
        if question.startswith("What color is the "):
            kind = question.removeprefix("What color is the ").removesuffix(" in the picture?")
            (shape,) = [s for s in scene.shapes if s.kind == kind]
            assert answer == shape.colour == drawn_colour(record, shape)
            assert shape.colour not in wrong
            assert f"The {kind} is {shape.colour}." in record["rationales"]
            asked["colour"] += 1
        elif question.startswith("Which fruit is usually the same color as the "):
            kind = question.removeprefix("Which fruit is usually the same color as the ").removesuffix("?")
            (shape,) = [s for s in scene.shapes if s.kind == kind]
            assert drawn_colour(record, shape) == shape.colour
            assert answer == FRUIT_OF_COLOUR[shape.colour]
            assert all(shape.colour not in CAN_BE[fruit] for fruit in wrong)
            assert f"The {kind} is {shape.colour}." in record["rationales"]
            asked["fruit"] += 1
        elif question.startswith("How many corners does the "):
            kind = question.removeprefix("How many corners does the ").removesuffix(" have?")
            assert [s.kind for s in scene.shapes].count(kind) == 1
            assert answer == str(CORNERS[kind]) and str(CORNERS[kind]) not in wrong
            asked["corners"] += 1
        else:
            assert question == "How many shapes would be left if one of them were erased?"
            assert answer == str(len(scene.shapes) - 1) and answer not in wrong
            asked["erase"] += 1
    assert asked["colour"] and asked["fruit"] and asked["corners"] and asked["erase"]


def test_direct_answers_mostly_agree_with_the_correct_choice(world):
    records = read(world)
    for record in records:
        counts = Counter(record["answers"])
        assert counts.most_common(1)[0][0] == record["answer"]
        assert record["difficult_direct_answer"] == (counts[record["answer"]] < 5)
    assert any(r["difficult_direct_answer"] for r in records) and not all(r["difficult_direct_answer"] for r in records)


def test_image_sizes_are_read_from_the_images(world):
    for record in read(world, "val"):
        scene = scene_of(record, "val")
        assert Image.open(record["image"]["path"]).size == (record["image"]["width"], record["image"]["height"])
        assert (scene.width, scene.height) == (record["image"]["width"], record["image"]["height"])


def test_test_split_has_choices_but_no_answers(world):
    native = json.loads(annotation_file(world, "test").read_text())
    assert native and all("correct_choice_idx" not in row and "direct_answers" not in row for row in native)
    records = read(world, "test")
    assert len(records) == len(native)
    for record, row in zip(records, native):
        assert record["id"] == f"aokvqa:test:{row['question_id']}"
        assert record["choices"] == row["choices"] and len(record["choices"]) == 4
        assert record["answer"] is None and record["answers"] is None
        assert record["answer_index"] is None and record["rationales"] is None
        assert Path(record["image"]["path"]).parent.name == "test2017"


def test_images_can_be_named_another_way(world, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (coco(world) / "val2017").glob("*.jpg"):
        (flat / f"{int(path.stem)}.jpg").write_bytes(path.read_bytes())
    records = read_aokvqa(annotation_file(world, "val"), flat, "val", image_name="{image_id}.jpg")
    assert records and all(Path(r["image"]["path"]).parent == flat for r in records)


def test_card_names_this_adapter():
    module, _, attribute = get_card("aokvqa")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_aokvqa


# ---------------------------------------------------------------- malformed files


def _raises(world, tmp_path, edit, pattern, split="train"):
    broken = broken_copy(annotation_file(world, split), tmp_path, edit)
    with pytest.raises(AnnotationError, match=pattern):
        read_aokvqa(broken, coco(world), split)


def test_missing_choices_are_named(world, tmp_path):
    def drop(data):
        del data[3]["choices"]

    _raises(world, tmp_path, drop, r"aokvqa_v1p0_train\.json: \[3\]: missing field 'choices'")


def test_question_id_of_the_wrong_type_is_named(world, tmp_path):
    def number(data):
        data[1]["question_id"] = 12345

    _raises(world, tmp_path, number, r"aokvqa_v1p0_train\.json: \[1\]: field 'question_id' is a number .*expected a string")


def test_correct_choice_outside_the_choices_is_named(world, tmp_path):
    def past_the_end(data):
        data[2]["correct_choice_idx"] = 4

    _raises(world, tmp_path, past_the_end, r"\[2\]: field 'correct_choice_idx' is 4; expected 0-3")


def test_correct_choice_of_the_wrong_type_is_named(world, tmp_path):
    def text(data):
        data[0]["correct_choice_idx"] = "2"

    _raises(world, tmp_path, text, r"\[0\]: field 'correct_choice_idx' is a string .*expected an integer")


def test_direct_answer_that_is_not_text_is_named(world, tmp_path):
    def null(data):
        data[4]["direct_answers"][7] = None

    _raises(world, tmp_path, null, r"aokvqa_v1p0_train\.json: \[4\]: direct_answers\[7\] is None; expected a string")


def test_difficult_flag_that_is_not_a_boolean_is_named(world, tmp_path):
    def text(data):
        data[5]["difficult_direct_answer"] = "false"

    _raises(world, tmp_path, text, r"\[5\]: field 'difficult_direct_answer' is 'false'; expected true or false")


def test_question_without_an_image_is_named(world, tmp_path):
    def point_elsewhere(data):
        data[2]["image_id"] = 777

    _raises(world, tmp_path, point_elsewhere, r"aokvqa_v1p0_train\.json: \[2\]: image_id 777 has no image at .*train2017")


def test_question_id_given_twice_is_named(world, tmp_path):
    def repeat(data):
        data[3]["question_id"] = data[0]["question_id"]

    _raises(world, tmp_path, repeat, r"\[3\]: question_id '\w{22}' appears twice")


def test_top_level_object_is_named(world, tmp_path):
    broken = tmp_path / "aokvqa_v1p0_val.json"
    broken.write_text(json.dumps({"questions": json.loads(annotation_file(world, "val").read_text())}))
    with pytest.raises(AnnotationError, match=r"aokvqa_v1p0_val\.json: top level is an object; expected a list"):
        read_aokvqa(broken, coco(world), "val")


def test_file_that_is_not_json_is_named(world, tmp_path):
    broken = tmp_path / "aokvqa_v1p0_val.json"
    broken.write_text('[\n{"split": "val",\n "image_id": ]')
    with pytest.raises(AnnotationError, match=r"aokvqa_v1p0_val\.json: not valid JSON .*line 3"):
        read_aokvqa(broken, coco(world), "val")
