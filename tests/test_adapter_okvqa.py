"""OK-VQA adapter: VQA v1-layout questions + annotations over COCO 2014 images, read back from the shapes world."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.okvqa import read_okvqa
from catalog.cards import get_card
from pipelines.shapes_world.draw import nearest_colour_name
from pipelines.shapes_world.formats.okvqa import FIRST_IMAGE_ID, okvqa_scene, write_okvqa
from annotation_files import broken_copy

SEED = 4
# What most people name, written out here rather than read from the writer.
USUAL_FRUIT = {"red": "apple", "green": "lime", "blue": "blueberry", "yellow": "banana", "purple": "grape", "orange": "orange"}
SIDES = {"triangle": "3", "square": "4", "hexagon": "6"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("okvqa")
    return write_okvqa(out, seed=SEED, scenes=12)


@pytest.fixture(scope="module")
def world_with_mca(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("okvqa-mca")
    return write_okvqa(out, seed=SEED, scenes=12, multiple_choice_answer=True)


def files(world: dict, subtype: str = "train2014") -> tuple[Path, Path, Path]:
    written = world[subtype]
    return Path(written["questions_file"]), Path(written["annotations_file"]), Path(written["images"])


def read(world: dict, subtype: str = "train2014", split: str = "train") -> list[dict]:
    questions, annotations, images = files(world, subtype)
    return read_okvqa(questions, annotations, images, split)


def scene_of(record: dict, subtype: str = "train2014"):
    image_id = int(Path(record["image"]["path"]).stem.rsplit("_", 1)[1])
    return okvqa_scene(SEED, subtype, image_id - FIRST_IMAGE_ID[subtype])[0]


# ---------------------------------------------------------------- reading


def test_official_file_names_are_written(world):
    questions, annotations, images = files(world, "val2014")
    assert questions.name == "OpenEnded_mscoco_val2014_questions.json"
    assert annotations.name == "mscoco_val2014_annotations.json"
    assert images.name == "val2014"


def test_one_record_per_question_with_the_ten_human_answers(world):
    questions, annotations, _ = files(world)
    records = read(world)
    native_questions = json.loads(questions.read_text())["questions"]
    native_answers = {a["question_id"]: a for a in json.loads(annotations.read_text())["annotations"]}
    assert len(records) == len(native_questions) == world["train2014"]["questions"] > 12
    for record, question in zip(records, native_questions):
        annotation = native_answers[question["question_id"]]
        assert record["id"] == f"okvqa:train:{question['question_id']}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("okvqa", "knowledge_vqa", "train", "en")
        assert record["question"] == question["question"]
        assert record["answers"] == [a["answer"] for a in annotation["answers"]] and len(record["answers"]) == 10
        assert record["answer_type"] == "other" and record["question_type"] == annotation["question_type"]
        assert Path(record["image"]["path"]).name == f"COCO_train2014_{question['image_id']:012d}.jpg"


def test_answers_are_true_of_the_scene_drawn(world):
    records = read(world)
    asked = Counter()
    for record in records:
        scene = scene_of(record)
        question = record["question"]
        if question.startswith("Which fruit is the same color as the "):
            kind = question.removeprefix("Which fruit is the same color as the ").removesuffix("?")
            (shape,) = [s for s in scene.shapes if s.kind == kind]
            assert record["answer"] == USUAL_FRUIT[shape.colour]
            # The colour the answer rests on is the colour drawn at the shape's centre.
            with Image.open(record["image"]["path"]) as image:
                pixel = image.convert("RGB").getpixel(tuple(int(v) for v in shape.centre))
            assert nearest_colour_name(pixel) == shape.colour
            asked["fruit"] += 1
        elif question.startswith("How many sides does the "):
            kind = question.removeprefix("How many sides does the ").removesuffix(" have?")
            assert [s.kind for s in scene.shapes].count(kind) == 1
            assert record["answer"] == SIDES[kind]
            asked["sides"] += 1
        else:
            assert question == "How many shapes would you have to erase to leave the picture blank?"
            assert record["answer"] == str(len(scene.shapes))
            asked["erase"] += 1
    assert asked["fruit"] and asked["sides"]


def test_image_sizes_are_read_from_the_images(world):
    for record in read(world):
        path = Path(record["image"]["path"])
        assert path.is_absolute()
        assert Image.open(path).size == (record["image"]["width"], record["image"]["height"])
        scene = scene_of(record)
        assert (scene.width, scene.height) == (record["image"]["width"], record["image"]["height"])


def test_files_without_multiple_choice_answer_train_on_the_most_common_answer(world):
    _, annotations, _ = files(world)
    native = json.loads(annotations.read_text())["annotations"]
    assert all("multiple_choice_answer" not in a for a in native)
    for record in read(world):
        counts = Counter(record["answers"])
        assert counts[record["answer"]] == max(counts.values())
    assert any(len(set(r["answers"])) > 1 for r in read(world))  # some questions have disagreeing answers


def test_files_with_multiple_choice_answer_read_the_same(world, world_with_mca):
    _, annotations, _ = files(world_with_mca)
    assert all("multiple_choice_answer" in a for a in json.loads(annotations.read_text())["annotations"])
    plain, with_mca = read(world), read(world_with_mca)
    assert [(r["id"], r["answer"], r["answers"]) for r in plain] == [(r["id"], r["answer"], r["answers"]) for r in with_mca]


def _tie(data):
    # Two annotators said apple and two said cherry (each written twice): a tie.
    data["annotations"][0]["answers"] = [
        {"answer": answer, "raw_answer": answer, "answer_confidence": "yes", "answer_id": n}
        for n, answer in enumerate(["apple", "apple", "cherry", "cherry", "plum", "plum"], start=1)
    ]


def test_a_tie_goes_to_the_answer_given_first(world, tmp_path):
    questions, annotations, images = files(world)
    broken = broken_copy(annotations, tmp_path, _tie)
    assert read_okvqa(questions, broken, images, "train")[0]["answer"] == "apple"


def test_a_tie_goes_to_multiple_choice_answer_when_the_file_has_one(world, tmp_path):
    questions, annotations, images = files(world)

    def tie_with_official(data):
        _tie(data)
        data["annotations"][0]["multiple_choice_answer"] = "cherry"

    broken = broken_copy(annotations, tmp_path, tie_with_official)
    assert read_okvqa(questions, broken, images, "train")[0]["answer"] == "cherry"


def test_multiple_choice_answer_never_outvotes_the_annotators(world, tmp_path):
    questions, annotations, images = files(world)

    def minority_official(data):
        _tie(data)
        data["annotations"][0]["answers"][5]["answer"] = "apple"  # apple x3, cherry x2, plum x1
        data["annotations"][0]["multiple_choice_answer"] = "plum"

    broken = broken_copy(annotations, tmp_path, minority_official)
    assert read_okvqa(questions, broken, images, "train")[0]["answer"] == "apple"


def test_without_annotations_there_are_no_answers(world):
    questions, _, images = files(world, "val2014")
    records = read_okvqa(questions, None, images, "val")
    assert len(records) == world["val2014"]["questions"]
    assert all(r["answer"] is None and r["answers"] is None and r["question_type"] is None for r in records)


def test_images_can_be_named_another_way(world, tmp_path):
    questions, annotations, images = files(world, "val2014")
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in images.glob("*.jpg"):
        (flat / f"{int(path.stem.rsplit('_', 1)[1])}.jpg").write_bytes(path.read_bytes())
    records = read_okvqa(questions, annotations, flat, "val", image_name="{image_id}.jpg")
    assert records and all(Path(r["image"]["path"]).parent == flat for r in records)


def test_card_names_this_adapter():
    module, _, attribute = get_card("okvqa")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_okvqa


# ---------------------------------------------------------------- malformed files


def test_missing_answers_field_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def drop(data):
        del data["annotations"][5]["answers"]

    broken = broken_copy(annotations, tmp_path, drop)
    with pytest.raises(AnnotationError, match=r"mscoco_train2014_annotations\.json: annotations\[5\]: missing field 'answers'"):
        read_okvqa(questions, broken, images, "train")


def test_human_answer_without_text_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def drop(data):
        del data["annotations"][2]["answers"][3]["answer"]

    broken = broken_copy(annotations, tmp_path, drop)
    with pytest.raises(AnnotationError, match=r"annotations\[2\]\.answers\[3\]: missing field 'answer'"):
        read_okvqa(questions, broken, images, "train")


def test_empty_answer_list_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def empty(data):
        data["annotations"][1]["answers"] = []

    broken = broken_copy(annotations, tmp_path, empty)
    with pytest.raises(AnnotationError, match=r"annotations\[1\]: field 'answers' is empty"):
        read_okvqa(questions, broken, images, "train")


def test_multiple_choice_answer_of_the_wrong_type_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def number(data):
        data["annotations"][4]["multiple_choice_answer"] = 3

    broken = broken_copy(annotations, tmp_path, number)
    with pytest.raises(AnnotationError, match=r"annotations\[4\]: field 'multiple_choice_answer' is a number .*expected a string"):
        read_okvqa(questions, broken, images, "train")


def test_question_id_of_the_wrong_type_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def stringify(data):
        data["questions"][3]["question_id"] = str(data["questions"][3]["question_id"])

    broken = broken_copy(questions, tmp_path, stringify)
    with pytest.raises(
        AnnotationError,
        match=r"OpenEnded_mscoco_train2014_questions\.json: questions\[3\]: field 'question_id' is a string .*expected an integer",
    ):
        read_okvqa(broken, annotations, images, "train")


def test_question_without_an_image_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def point_elsewhere(data):
        data["questions"][2]["image_id"] = 777

    broken = broken_copy(questions, tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=r"questions\[2\]: image_id 777, but there is no image at"):
        read_okvqa(broken, None, images, "train")


def test_answer_for_an_unknown_question_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def drop_question(data):
        data["questions"].pop(0)

    broken = broken_copy(questions, tmp_path, drop_question)
    with pytest.raises(AnnotationError, match=r"mscoco_train2014_annotations\.json: annotations\[0\]: question_id \d+ is not in"):
        read_okvqa(broken, annotations, images, "train")


def test_question_without_an_annotation_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def drop_annotation(data):
        data["annotations"].pop(2)

    broken = broken_copy(annotations, tmp_path, drop_annotation)
    with pytest.raises(AnnotationError, match=r"no annotation for question_id \d+ \(OpenEnded_mscoco_train2014_questions\.json questions\[2\]\)"):
        read_okvqa(questions, broken, images, "train")


def test_annotation_on_another_image_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def move(data):
        data["annotations"][6]["image_id"] += 1

    broken = broken_copy(annotations, tmp_path, move)
    with pytest.raises(AnnotationError, match=r"annotations\[6\]: image_id \d+ differs from image_id \d+ of question_id"):
        read_okvqa(questions, broken, images, "train")


def test_question_annotated_twice_is_named(world, tmp_path):
    questions, annotations, images = files(world)

    def repeat(data):
        data["annotations"].append(data["annotations"][0])

    broken = broken_copy(annotations, tmp_path, repeat)
    with pytest.raises(AnnotationError, match=r"annotations\[\d+\]: question_id \d+ is annotated twice"):
        read_okvqa(questions, broken, images, "train")


def test_file_that_is_not_json_is_named(world, tmp_path):
    _, annotations, images = files(world)
    broken = tmp_path / "OpenEnded_mscoco_train2014_questions.json"
    broken.write_text('{"questions": [\n{"image_id": 1,')
    with pytest.raises(AnnotationError, match=r"OpenEnded_mscoco_train2014_questions\.json: not valid JSON .*line 2"):
        read_okvqa(broken, annotations, images, "train")
