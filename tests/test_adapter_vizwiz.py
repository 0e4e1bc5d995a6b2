"""VizWiz VQA: the shapes-world fixture read back through catalog.adapters.vizwiz."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.vizwiz import read_vizwiz
from catalog.cards import get_card
from pipelines.shapes_world.draw import nearest_colour_name
from pipelines.shapes_world.formats.vizwiz import vizwiz_question, vizwiz_scene, write_vizwiz
from annotation_files import broken_copy

SEED = 4
SCENES = 12


@pytest.fixture(scope="module")
def vizwiz(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vizwiz")
    write_vizwiz(out, seed=SEED, scenes=SCENES)
    return out


def annotations(root: Path, split: str) -> Path:
    return root / "Annotations" / f"{split}.json"


def read(root: Path, split: str) -> list[dict]:
    return read_vizwiz(annotations(root, split), root / split, split)


def test_vizwiz_gives_one_record_per_image_named_by_its_file(vizwiz):
    records = read(vizwiz, "val")
    native = json.loads(annotations(vizwiz, "val").read_text())
    assert len(records) == len(native) == SCENES
    for index, (record, row) in enumerate(zip(records, native)):
        assert record["id"] == f"vizwiz:val:VizWiz_val_{index:08d}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("vizwiz", "vqa", "val", "en")
        assert record["question"] == row["question"]
        assert record["answers"] == [a["answer"] for a in row["answers"]] and len(record["answers"]) == 10
        assert record["answer_type"] == row["answer_type"]
        assert record["answerable"] is bool(row["answerable"])
        assert Path(record["image"]["path"]).is_absolute() and Path(record["image"]["path"]).name == row["image"]


def test_vizwiz_answer_is_the_most_common_and_true_of_the_scene(vizwiz):
    for split in ("train", "val"):
        for index, record in enumerate(read(vizwiz, split)):
            truth = vizwiz_question(SEED, split, index)
            assert record["answer"] == Counter(record["answers"]).most_common(1)[0][0] == truth["answer"]
            assert record["answerable"] is (truth["answerable"] == 1)


def test_vizwiz_unanswerable_questions_keep_answerable_false(vizwiz):
    unanswerable = [r for r in read(vizwiz, "train") if not r["answerable"]]
    assert unanswerable
    assert all(r["answer"] == "unanswerable" and r["answer_type"] == "unanswerable" for r in unanswerable)
    assert all("label" in r["question"] or "brand" in r["question"] or "date" in r["question"] for r in unanswerable)


def test_vizwiz_colour_answers_are_the_colour_drawn(vizwiz):
    checked = 0
    for split in ("train", "val"):
        for index, record in enumerate(read(vizwiz, split)):
            scene, _ = vizwiz_scene(SEED, split, index)
            assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
            if not record["question"].startswith(("What color is the ", "What is the color of the ", "Which color is the ")):
                continue
            kind = record["question"].rstrip("?").split()[-1]
            (shape,) = [s for s in scene.shapes if s.kind == kind]
            assert record["answer"] == shape.colour
            with Image.open(record["image"]["path"]) as image:
                pixel = image.convert("RGB").getpixel(tuple(int(v) for v in shape.centre))
            assert nearest_colour_name(pixel) == shape.colour
            checked += 1
    assert checked > 0


def test_vizwiz_test_split_has_no_answers(vizwiz):
    records = read(vizwiz, "test")
    assert len(records) == SCENES
    assert all(r["answer"] is None and r["answers"] is None and r["answerable"] is None for r in records)
    assert records[0]["question"] == vizwiz_question(SEED, "test", 0)["question"]


def test_vizwiz_missing_answers_field_names_file_row_and_field(vizwiz, tmp_path):
    def drop_answers(data):
        del data[3]["answers"]

    broken = broken_copy(annotations(vizwiz, "val"), tmp_path, drop_answers)
    with pytest.raises(AnnotationError, match=r"val\.json: \[3\]: missing field 'answers'"):
        read_vizwiz(broken, vizwiz / "val", "val")


def test_vizwiz_crowd_answer_of_the_wrong_type_is_named(vizwiz, tmp_path):
    def number_answer(data):
        data[2]["answers"][4]["answer"] = 2

    broken = broken_copy(annotations(vizwiz, "train"), tmp_path, number_answer)
    with pytest.raises(AnnotationError, match=r"train\.json: \[2\]\.answers\[4\]: field 'answer' is a number .*expected a string"):
        read_vizwiz(broken, vizwiz / "train", "train")


def test_vizwiz_answerable_other_than_0_or_1_is_named(vizwiz, tmp_path):
    def yes(data):
        data[1]["answerable"] = "yes"

    broken = broken_copy(annotations(vizwiz, "train"), tmp_path, yes)
    with pytest.raises(AnnotationError, match=r"\[1\]: field 'answerable' is a string .*expected an integer"):
        read_vizwiz(broken, vizwiz / "train", "train")


def test_vizwiz_question_whose_image_is_missing_is_named(vizwiz, tmp_path):
    def point_elsewhere(data):
        data[5]["image"] = "VizWiz_val_00099999.jpg"

    broken = broken_copy(annotations(vizwiz, "val"), tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=r"val\.json: \[5\]: field 'image' names 'VizWiz_val_00099999\.jpg', but there is no image at"):
        read_vizwiz(broken, vizwiz / "val", "val")


def test_vizwiz_file_that_is_not_a_list_or_not_json_is_named(tmp_path):
    wrapped = tmp_path / "val.json"
    wrapped.write_text('{"annotations": []}')
    with pytest.raises(AnnotationError, match=r"val\.json: top level is an object; expected a list"):
        read_vizwiz(wrapped, tmp_path, "val")
    truncated = tmp_path / "train.json"
    truncated.write_text('[{"image": "VizWiz_train_00000000.jpg",\n')
    with pytest.raises(AnnotationError, match=r"train\.json: not valid JSON .*line 2"):
        read_vizwiz(truncated, tmp_path, "train")


def test_vizwiz_card_names_this_adapter():
    module, _, attribute = get_card("vizwiz")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_vizwiz
