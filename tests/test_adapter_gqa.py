"""GQA balanced questions: the shapes-world fixture read back through catalog.adapters.gqa."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.gqa import read_gqa
from catalog.cards import get_card
from pipelines.shapes_world.draw import nearest_colour_name
from pipelines.shapes_world.formats.gqa import gqa_image_id, gqa_scene, write_gqa
from annotation_files import broken_copy

SCENES = 8


@pytest.fixture(scope="module")
def gqa(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gqa")
    write_gqa(out, seed=2, scenes=SCENES)
    return out


def questions_file(root: Path, split: str = "val") -> Path:
    return root / f"{split}_balanced_questions.json"


def scene_of(record: dict, split: str = "val"):
    image_name = Path(record["image"]["path"]).stem
    index = next(i for i in range(SCENES) if gqa_image_id(split, i) == image_name)
    return gqa_scene(2, split, index)[0]


def test_gqa_gives_one_record_per_question_in_file_order(gqa):
    native = json.loads(questions_file(gqa).read_text())
    records = read_gqa(questions_file(gqa), gqa / "images", "val")
    assert [r["id"] for r in records] == [f"gqa:val:{qid}" for qid in native]
    for record, (qid, question) in zip(records, native.items()):
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("gqa", "visual_reasoning", "val", "en")
        assert record["question"] == question["question"]
        assert record["answer"] == question["answer"] and record["answers"] == [question["answer"]]
        assert record["full_answer"] == question["fullAnswer"]
        assert record["question_type"] == question["types"]["detailed"]
        assert Path(record["image"]["path"]).name == f"{question['imageId']}.jpg"


def test_gqa_image_ids_of_both_visual_genome_forms_resolve(gqa):
    names = {Path(r["image"]["path"]).stem for r in read_gqa(questions_file(gqa, "train"), gqa / "images", "train")}
    assert any(n.startswith("n") for n in names) and any(n.isdigit() for n in names)


def test_gqa_image_sizes_are_the_drawn_sizes(gqa):
    for record in read_gqa(questions_file(gqa), gqa / "images", "val"):
        scene = scene_of(record)
        assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
        assert Path(record["image"]["path"]).is_absolute()


def test_gqa_colour_answers_are_the_colour_drawn(gqa):
    checked = 0
    for split in ("train", "val", "testdev"):
        for record in read_gqa(questions_file(gqa, split), gqa / "images", split):
            if record["question_type"] != "queryAttr":
                continue
            scene = scene_of(record, split)
            kind = record["question"].removeprefix("What color is the ").removesuffix("?")
            (shape,) = [s for s in scene.shapes if s.kind == kind]
            assert record["answer"] == shape.colour
            assert record["full_answer"] == f"The {kind} is {shape.colour}."
            with Image.open(record["image"]["path"]) as image:
                centre = tuple(int(v) for v in shape.centre)
                assert nearest_colour_name(image.convert("RGB").getpixel(centre)) == shape.colour
            checked += 1
    assert checked > 0


def test_gqa_yes_no_and_position_answers_agree_with_the_scene(gqa):
    checked = 0
    for record in read_gqa(questions_file(gqa, "train"), gqa / "images", "train"):
        scene = scene_of(record, "train")
        if record["question_type"] == "existAttrC":
            words = record["question"].removeprefix("Are there ").removesuffix(" in the image?").split()
            colour, kind = words[0], words[1][:-1]
            present = any((s.colour, s.kind) == (colour, kind) for s in scene.shapes)
            assert record["answer"] == ("yes" if present else "no")
            checked += 1
        if record["question_type"] == "positionChoose":
            name = record["question"].removeprefix("On which side of the image is the ").split(",")[0]
            (shape,) = [s for s in scene.shapes if name in (s.kind, f"{s.colour} {s.kind}")]
            assert record["answer"] == ("left" if shape.centre[0] < scene.width / 2 else "right")
            checked += 1
    assert checked > 0


def test_gqa_questions_without_answers_give_none(gqa, tmp_path):
    def drop_answers(data):
        for question in data.values():
            del question["answer"], question["fullAnswer"]

    unanswered = broken_copy(questions_file(gqa), tmp_path, drop_answers)
    records = read_gqa(unanswered, gqa / "images", "test")
    assert records and all(r["answer"] is None and r["answers"] is None and r["full_answer"] is None for r in records)


def test_gqa_test_file_entries_of_image_question_and_balance_only_are_read(gqa, tmp_path):
    # The published test and challenge files keep, per question, only these three fields.
    native = json.loads(questions_file(gqa).read_text())
    test_file = tmp_path / "test_balanced_questions.json"
    test_file.write_text(json.dumps({qid: {"imageId": q["imageId"], "question": q["question"], "isBalanced": True}
                                     for qid, q in native.items()}))
    records = read_gqa(test_file, gqa / "images", "test")
    assert [r["id"] for r in records] == [f"gqa:test:{qid}" for qid in native]
    for record, question in zip(records, native.values()):
        assert record["question"] == question["question"]
        assert Path(record["image"]["path"]).name == f"{question['imageId']}.jpg"
        assert (record["answer"], record["answers"], record["full_answer"], record["question_type"]) == (None,) * 4


def test_gqa_answered_question_without_types_is_named(gqa, tmp_path):
    third = list(json.loads(questions_file(gqa).read_text()))[3]

    def drop_types(data):
        del data[third]["types"]

    broken = broken_copy(questions_file(gqa), tmp_path, drop_types)
    with pytest.raises(AnnotationError, match=rf'val_balanced_questions\.json: \["{third}"\]: missing field \'types\''):
        read_gqa(broken, gqa / "images", "val")


def test_gqa_question_type_falls_back_to_structural(gqa, tmp_path):
    first = next(iter(json.loads(questions_file(gqa).read_text())))

    def drop_detailed(data):
        del data[first]["types"]["detailed"]

    broken = broken_copy(questions_file(gqa), tmp_path, drop_detailed)
    record = read_gqa(broken, gqa / "images", "val")[0]
    assert record["question_type"] in ("verify", "query", "choose")


def test_gqa_missing_answer_names_file_question_and_field(gqa, tmp_path):
    third = list(json.loads(questions_file(gqa).read_text()))[3]

    def drop_answer(data):
        del data[third]["answer"]

    broken = broken_copy(questions_file(gqa), tmp_path, drop_answer)
    with pytest.raises(AnnotationError, match=rf'val_balanced_questions\.json: \["{third}"\]: missing field \'answer\''):
        read_gqa(broken, gqa / "images", "val")


def test_gqa_image_id_of_the_wrong_type_is_named(gqa, tmp_path):
    first = next(iter(json.loads(questions_file(gqa).read_text())))

    def numeric_image_id(data):
        data[first]["imageId"] = 2354786

    broken = broken_copy(questions_file(gqa), tmp_path, numeric_image_id)
    with pytest.raises(AnnotationError, match=rf'\["{first}"\]: field \'imageId\' is a number .*expected a string'):
        read_gqa(broken, gqa / "images", "val")


def test_gqa_question_whose_image_is_missing_is_named(gqa, tmp_path):
    first = next(iter(json.loads(questions_file(gqa).read_text())))

    def point_elsewhere(data):
        data[first]["imageId"] = "n999999"

    broken = broken_copy(questions_file(gqa), tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=rf'val_balanced_questions\.json: \["{first}"\]: imageId \'n999999\' has no image'):
        read_gqa(broken, gqa / "images", "val")


def test_gqa_question_that_is_not_an_object_is_named(gqa, tmp_path):
    first = next(iter(json.loads(questions_file(gqa).read_text())))

    def flatten(data):
        data[first] = "Is the circle red?"

    broken = broken_copy(questions_file(gqa), tmp_path, flatten)
    with pytest.raises(AnnotationError, match=rf'\["{first}"\]: is a string; expected an object'):
        read_gqa(broken, gqa / "images", "val")


def test_gqa_file_that_is_not_json_is_named(tmp_path):
    broken = tmp_path / "testdev_balanced_questions.json"
    broken.write_text('{"201307251": {"imageId": ')
    with pytest.raises(AnnotationError, match=r"testdev_balanced_questions\.json: not valid JSON .*line 1"):
        read_gqa(broken, tmp_path, "testdev")


def test_gqa_card_names_this_adapter():
    module, _, attribute = get_card("gqa")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_gqa
