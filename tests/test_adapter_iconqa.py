"""IconQA problem folders read into canonical records: choose_txt by default, choose_img and fill_in_blank on request."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.iconqa import read_iconqa
from catalog.cards import get_card
from pipelines.shapes_world.draw import nearest_colour_name
from pipelines.shapes_world.formats.iconqa import (
    iconqa_pid, iconqa_placement, iconqa_problem, iconqa_scene, write_iconqa,
)

SEED, SCENES = 4, 18


@pytest.fixture(scope="module")
def iconqa(tmp_path_factory) -> dict:
    summary = write_iconqa(tmp_path_factory.mktemp("iconqa"), seed=SEED, scenes=SCENES)
    assert summary["problems"] == SCENES
    return {"root": Path(summary["data_root"]), "splits": Path(summary["splits_file"])}


def scene_index(record: dict) -> int:
    return int(record["id"].rsplit(":", 1)[1]) - 100


def indices(split: str, sub_task: str) -> list[int]:
    return [i for i in range(SCENES) if iconqa_placement(i) == (split, sub_task)]


def editable_copy(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "iconqa_data"
    shutil.copytree(root, copy)
    return copy


def edit_problem(root: Path, index: int, edit) -> Path:
    split, sub_task = iconqa_placement(index)
    path = root / "iconqa" / split / sub_task / iconqa_pid(index) / "data.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_choose_txt_is_the_default_and_gives_each_split_its_problems_in_pid_order(iconqa):
    for split in ("train", "val", "test"):
        records = read_iconqa(iconqa["root"], split)
        assert [r["id"] for r in records] == [f"iconqa:{split}:{iconqa_pid(i)}" for i in indices(split, "choose_txt")]
        for record in records:
            assert (record["dataset"], record["task"], record["split"], record["lang"]) == (
                "iconqa", "visual_reasoning", split, "en")
            assert record["question_type"] == "choose_txt"


def test_choose_txt_answer_is_the_true_choice_of_two_to_five(iconqa):
    records = read_iconqa(iconqa["root"], "test") + read_iconqa(iconqa["root"], "train")
    assert records
    for record in records:
        problem, truth = iconqa_problem(SEED, scene_index(record))
        assert record["question"] == problem["question"] and record["choices"] == problem["choices"]
        assert 2 <= len(record["choices"]) <= 5
        assert record["answer"] == record["choices"][record["answer_index"]] == truth["answer"]
        assert record["answers"] == [truth["answer"]] and record["choices"].count(truth["answer"]) == 1


def test_count_answers_match_the_drawn_scene(iconqa):
    checked = 0
    for split in ("train", "val", "test"):
        for record in read_iconqa(iconqa["root"], split, sub_tasks=("choose_txt", "fill_in_blank")):
            scene, _ = iconqa_scene(SEED, scene_index(record))
            assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
            assert Image.open(record["image"]["path"]).size == (scene.width, scene.height)
            question = record["question"]
            if question in ("How many shapes are there?", "How many objects are in the image?"):
                assert record["answer"] == str(len(scene.shapes))
                checked += 1
            elif question.startswith("How many ") and question.count(" ") == 4:  # "How many {kind}s are there?"
                kind = question.split()[2][:-1]
                assert record["answer"] == str(sum(s.kind == kind for s in scene.shapes))
                checked += 1
    assert checked >= 4


def test_fill_in_blank_has_a_text_answer_and_no_choices(iconqa):
    records = read_iconqa(iconqa["root"], "val", sub_tasks=("fill_in_blank",))
    assert [scene_index(r) for r in records] == indices("val", "fill_in_blank")
    for record in records:
        assert record["choices"] is None and record["answer_index"] is None
        assert record["answer"].isdigit() and record["question_type"] == "fill_in_blank"


def test_choose_img_choices_are_image_paths_and_the_answer_shows_a_shape_of_the_scene(iconqa):
    records = read_iconqa(iconqa["root"], "train", sub_tasks=["choose_img"])
    assert [scene_index(r) for r in records] == indices("train", "choose_img")
    for record in records:
        scene, _ = iconqa_scene(SEED, scene_index(record))
        looks_in_scene = {(s.colour, s.kind) for s in scene.shapes}
        _, truth = iconqa_problem(SEED, scene_index(record))
        assert 2 <= len(record["choices"]) <= 5
        for n, (choice, look) in enumerate(zip(record["choices"], truth["looks"], strict=True)):
            assert Path(choice).is_absolute() and Path(choice).name == f"choice_{n}.png"
            with Image.open(choice) as image:
                centre = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
            assert nearest_colour_name(centre) == look[0]
            assert (look in looks_in_scene) == (n == record["answer_index"])
        assert record["answer"] == record["choices"][record["answer_index"]]


def test_sub_tasks_come_in_the_order_asked(iconqa):
    records = read_iconqa(iconqa["root"], "test", sub_tasks=("fill_in_blank", "choose_txt"))
    assert [r["question_type"] for r in records] == (
        ["fill_in_blank"] * len(indices("test", "fill_in_blank")) + ["choose_txt"] * len(indices("test", "choose_txt")))


def test_pid_splits_picks_lists_and_finds_problems_in_their_own_split_folder(iconqa):
    splits = json.loads(iconqa["splits"].read_text())
    trainval = read_iconqa(iconqa["root"], "trainval", splits_file=iconqa["splits"])
    assert [r["id"] for r in trainval] == [f"iconqa:trainval:{pid}" for pid in splits["choose_txt_trainval"]]
    folders = {Path(r["image"]["path"]).parts[-4] for r in trainval}
    assert folders == {"train", "val"}
    minitest = read_iconqa(iconqa["root"], "minitest", splits_file=iconqa["splits"])
    assert [r["id"].rsplit(":", 1)[1] for r in minitest] == splits["choose_txt_minitest"]


def test_unknown_sub_tasks_and_splits_without_a_folder_are_refused(iconqa):
    with pytest.raises(ValueError, match=r"unknown sub-task\(s\) 'choose_text'.*choose_txt, choose_img, fill_in_blank"):
        read_iconqa(iconqa["root"], "test", sub_tasks=("choose_text",))
    with pytest.raises(ValueError, match=r"split 'trainval' has no folder of its own.*pid_splits\.json"):
        read_iconqa(iconqa["root"], "trainval")
    with pytest.raises(AnnotationError, match=r"pid_splits\.json: no list 'choose_txt_dev'"):
        read_iconqa(iconqa["root"], "dev", splits_file=iconqa["splits"])
    with pytest.raises(FileNotFoundError, match=r"iconqa/test/choose_txt: no IconQA problem folder"):
        read_iconqa(iconqa["root"] / "iconqa", "test")


FIRST_TXT = indices("train", "choose_txt")[0]
FIRST_IMG = indices("train", "choose_img")[0]
FIRST_BLANK = indices("train", "fill_in_blank")[0]


@pytest.mark.parametrize("index, sub_task, edit, message", [
    (FIRST_TXT, "choose_txt", lambda d: d.pop("choices"), r"missing field 'choices'"),
    (FIRST_TXT, "choose_txt", lambda d: d.pop("question"), r"missing field 'question'"),
    (FIRST_TXT, "choose_txt", lambda d: d.update({"answer": 9}), r"field 'answer' is 9; expected an index into its \d choices"),
    (FIRST_TXT, "choose_txt", lambda d: d.update({"answer": "one"}), r"field 'answer' is 'one'; expected an index into 'choices'"),
    (FIRST_TXT, "choose_txt", lambda d: d["choices"].__setitem__(0, 3), r"choices\[0\] is 3; expected a string"),
    (FIRST_TXT, "choose_txt", lambda d: d.update({"ques_type": "choose_img"}),
     r"field 'ques_type' is 'choose_img', but the problem is in the 'choose_txt' folder"),
    (FIRST_IMG, "choose_img", lambda d: d["choices"].__setitem__(1, "choice_9.png"),
     r"choices\[1\]: choice 'choice_9\.png', but there is no image at .*choice_9\.png"),
    (FIRST_BLANK, "fill_in_blank", lambda d: d.update({"answer": 3}), r"field 'answer' is a number \(3\); expected a string"),
])
def test_a_malformed_data_json_names_file_problem_and_field(iconqa, tmp_path, index, sub_task, edit, message):
    root = editable_copy(iconqa["root"], tmp_path)
    edit_problem(root, index, edit)
    with pytest.raises(AnnotationError, match=rf"{iconqa_pid(index)}/data\.json: problem '{iconqa_pid(index)}': " + message):
        read_iconqa(root, "train", sub_tasks=(sub_task,))


def test_a_digit_string_answer_is_the_same_index(iconqa, tmp_path):
    root = editable_copy(iconqa["root"], tmp_path)
    edit_problem(root, FIRST_TXT, lambda d: d.update({"answer": str(d["answer"])}))
    assert read_iconqa(root, "train") == [
        {**r, "image": {**r["image"], "path": r["image"]["path"].replace(str(iconqa["root"]), str(root))}}
        for r in read_iconqa(iconqa["root"], "train")]


def test_a_problem_without_its_image_or_data_json_is_named(iconqa, tmp_path):
    root = editable_copy(iconqa["root"], tmp_path)
    folder = root / "iconqa" / "train" / "choose_txt" / iconqa_pid(FIRST_TXT)
    (folder / "image.png").unlink()
    with pytest.raises(AnnotationError, match=rf"data\.json: problem '{iconqa_pid(FIRST_TXT)}': .*no image at .*image\.png"):
        read_iconqa(root, "train")
    (folder / "data.json").write_text("{not json")
    with pytest.raises(AnnotationError, match=r"data\.json: not valid JSON"):
        read_iconqa(root, "train")
    (folder / "data.json").unlink()
    with pytest.raises(AnnotationError, match=rf"problem '{iconqa_pid(FIRST_TXT)}' has no data\.json"):
        read_iconqa(root, "train")


def test_a_split_list_naming_a_problem_without_a_folder_is_named(iconqa, tmp_path):
    splits = json.loads(iconqa["splits"].read_text())
    splits["choose_txt_test"].insert(1, "4242")
    broken = tmp_path / "pid_splits.json"
    broken.write_text(json.dumps(splits))
    with pytest.raises(AnnotationError, match=r"pid_splits\.json: choose_txt_test\[1\]: problem '4242' has no folder"):
        read_iconqa(iconqa["root"], "test", splits_file=broken)


def test_the_iconqa_card_names_the_reader():
    module, _, attribute = get_card("iconqa")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_iconqa
