"""Native-format adapters (COCO Captions, VQAv2) and the dataset cards that name them."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.coco_captions import read_coco_captions
from catalog.adapters.vqav2 import read_vqav2
from catalog.cards import get_card, load_cards
from pipelines.shapes_world import write_demo_data
from annotation_files import broken_copy


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapters") / "world"
    write_demo_data(out, seed=5, pair_scenes=0, train_scenes=20, val_scenes=6, port=8000)
    return out


def captions_file(world: Path, subtype: str = "train2014") -> Path:
    return world / "coco" / "annotations" / f"captions_{subtype}.json"


def vqa_files(world: Path, subtype: str = "val2014") -> tuple[Path, Path]:
    return (
        world / "vqav2" / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
        world / "vqav2" / f"v2_mscoco_{subtype}_annotations.json",
    )


# ---------------------------------------------------------------- COCO Captions


def test_coco_captions_give_one_record_per_caption(world):
    records = read_coco_captions(captions_file(world), world / "coco" / "train2014", "train")
    native = json.loads(captions_file(world).read_text())
    assert len(records) == len(native["annotations"]) == 5 * 20
    first = records[0]
    assert first["id"] == f"coco_caption:train:{native['annotations'][0]['id']}"
    assert (first["dataset"], first["task"], first["split"], first["lang"]) == ("coco_caption", "captioning", "train", "en")
    assert first["caption"] == native["annotations"][0]["caption"]
    assert len({r["id"] for r in records}) == len(records)


def test_coco_caption_images_are_absolute_paths_with_true_sizes(world, monkeypatch):
    monkeypatch.chdir(world)
    records = read_coco_captions(captions_file(world), Path("coco") / "train2014", "train")
    for record in records[::5]:
        path = Path(record["image"]["path"])
        assert path.is_absolute() and path.is_file()
        assert Image.open(path).size == (record["image"]["width"], record["image"]["height"])


def test_coco_caption_missing_field_names_file_row_and_field(world, tmp_path):
    def drop_caption(data):
        del data["annotations"][17]["caption"]

    broken = broken_copy(captions_file(world), tmp_path, drop_caption)
    with pytest.raises(AnnotationError, match=r"captions_train2014\.json: annotations\[17\]: missing field 'caption'"):
        read_coco_captions(broken, world / "coco" / "train2014", "train")


def test_coco_caption_of_an_unknown_image_is_named(world, tmp_path):
    def point_elsewhere(data):
        data["annotations"][3]["image_id"] = 424242

    broken = broken_copy(captions_file(world), tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=r"annotations\[3\]: image_id 424242 is not in 'images'"):
        read_coco_captions(broken, world / "coco" / "train2014", "train")


def test_coco_image_with_a_bad_size_is_named(world, tmp_path):
    def bad_width(data):
        data["images"][2]["width"] = "wide"

    broken = broken_copy(captions_file(world), tmp_path, bad_width)
    with pytest.raises(AnnotationError, match=r"images\[2\]: field 'width' is a string .*expected an integer"):
        read_coco_captions(broken, world / "coco" / "train2014", "train")


def test_coco_file_that_is_not_json_is_named(tmp_path):
    broken = tmp_path / "captions_val2014.json"
    broken.write_text('{"images": [')
    with pytest.raises(AnnotationError, match=r"captions_val2014\.json: not valid JSON"):
        read_coco_captions(broken, tmp_path, "val")


# ---------------------------------------------------------------- VQAv2


def test_vqav2_gives_one_record_per_question_with_ten_answers(world):
    questions, annotations = vqa_files(world)
    records = read_vqav2(questions, annotations, world / "coco" / "val2014", "val")
    native_questions = json.loads(questions.read_text())["questions"]
    native_answers = {a["question_id"]: a for a in json.loads(annotations.read_text())["annotations"]}
    assert len(records) == len(native_questions)
    for record, question in zip(records, native_questions):
        answer = native_answers[question["question_id"]]
        assert record["id"] == f"vqav2:val:{question['question_id']}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("vqav2", "vqa", "val", "en")
        assert record["question"] == question["question"]
        assert record["answer"] == answer["multiple_choice_answer"]
        assert record["answers"] == [a["answer"] for a in answer["answers"]] and len(record["answers"]) == 10
        assert record["answer_type"] == answer["answer_type"]
        assert record["question_type"] == answer["question_type"]
        assert Path(record["image"]["path"]).name == f"COCO_val2014_{question['image_id']:012d}.jpg"


def test_vqav2_image_sizes_agree_with_coco(world):
    coco = json.loads(captions_file(world, "val2014").read_text())
    sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
    questions, annotations = vqa_files(world)
    for record in read_vqav2(questions, annotations, world / "coco" / "val2014", "val"):
        image_id = int(record["id"].rsplit(":", 1)[1]) // 1000
        assert (record["image"]["width"], record["image"]["height"]) == sizes[image_id]


def test_vqav2_without_annotations_has_no_answers(world):
    questions, _ = vqa_files(world)
    records = read_vqav2(questions, None, world / "coco" / "val2014", "test")
    assert records and all(r["answer"] is None and r["answers"] is None for r in records)


def test_vqav2_test_dev_questions_are_read_on_the_test2015_images(world, tmp_path):
    # The published test-dev file names its subtype test-dev2015, but test-dev is a subset of the test
    # questions: its images are test2015/COCO_test2015_<id>.jpg, and there is no test-dev2015 folder.
    questions, _ = vqa_files(world)
    native = json.loads(questions.read_text())
    native["data_subtype"] = "test-dev2015"
    test_dev = tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    test_dev.write_text(json.dumps(native))
    images = tmp_path / "test2015"
    images.mkdir()
    for path in (world / "coco" / "val2014").glob("*.jpg"):
        shutil.copy(path, images / path.name.replace("COCO_val2014_", "COCO_test2015_"))

    records = read_vqav2(test_dev, None, images, "test-dev")
    assert len(records) == len(native["questions"]) > 0
    for record, question in zip(records, native["questions"]):
        assert record["image"]["path"] == str(images / f"COCO_test2015_{question['image_id']:012d}.jpg")
        assert record["id"] == f"vqav2:test-dev:{question['question_id']}" and record["answers"] is None


def test_vqav2_missing_answers_field_is_named(world, tmp_path):
    questions, annotations = vqa_files(world)

    def drop_answers(data):
        del data["annotations"][5]["answers"]

    broken = broken_copy(annotations, tmp_path, drop_answers)
    with pytest.raises(AnnotationError, match=r"v2_mscoco_val2014_annotations\.json: annotations\[5\]: missing field 'answers'"):
        read_vqav2(questions, broken, world / "coco" / "val2014", "val")


def test_vqav2_question_without_an_image_is_named(world, tmp_path):
    questions, annotations = vqa_files(world)

    def point_elsewhere(data):
        data["questions"][2]["image_id"] = 777

    broken = broken_copy(questions, tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=r"v2_OpenEnded_mscoco_val2014_questions\.json: questions\[2\]: image_id 777, but there is no image at"):
        read_vqav2(broken, None, world / "coco" / "val2014", "val")


def test_vqav2_answer_for_an_unknown_question_is_named(world, tmp_path):
    questions, annotations = vqa_files(world)

    def drop_question(data):
        data["questions"].pop(0)

    broken = broken_copy(questions, tmp_path, drop_question)
    with pytest.raises(AnnotationError, match=r"annotations\[0\]: question_id \d+ is not in"):
        read_vqav2(broken, annotations, world / "coco" / "val2014", "val")


def test_vqav2_images_can_be_named_another_way(world, tmp_path):
    questions, annotations = vqa_files(world)
    flat = tmp_path / "images"
    flat.mkdir()
    for path in (world / "coco" / "val2014").glob("*.jpg"):
        shutil.copy(path, flat / f"{int(path.stem.rsplit('_', 1)[1])}.jpg")
    records = read_vqav2(questions, annotations, flat, "val", image_name="{image_id}.jpg")
    assert all(Path(r["image"]["path"]).parent == flat for r in records)


# ---------------------------------------------------------------- cards


def test_cards_describe_coco_caption_and_vqav2():
    cards = load_cards()
    assert {"coco_caption", "vqav2"} <= set(cards)
    coco, vqa = cards["coco_caption"], cards["vqav2"]
    assert coco["held"] == vqa["held"] == "held-in"
    assert coco["tasks"] == ["captioning"] and vqa["tasks"] == ["vqa"]
    assert [coco["splits"][s]["size"] for s in ("val", "test")] == [5000, 5000]
    assert (vqa["splits"]["train"]["size"], vqa["splits"]["val"]["size"]) == (443757, 214354)
    assert "cocodataset.org" in coco["source"] and "visualqa.org" in vqa["source"]
    assert coco["license"]["annotations"] == vqa["license"]["annotations"] == "CC BY 4.0"


def test_each_card_names_an_importable_adapter():
    expected = {"coco_caption": read_coco_captions, "vqav2": read_vqav2}
    for name, function in expected.items():
        module, _, attribute = get_card(name)["adapter"].rpartition(".")
        assert getattr(importlib.import_module(module), attribute) is function


def test_unknown_card_lists_the_known_names():
    with pytest.raises(KeyError) as unknown:
        get_card("coco_captions")
    assert "coco_caption" in str(unknown.value) and "vqav2" in str(unknown.value)
