"""Visual Dialog v1.0 files read into one canonical record per dialog round."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.visdial import read_visdial
from catalog.cards import get_card
from pipelines.shapes_world.formats.visdial import (
    visdial_dialog, visdial_image_id, visdial_test_rounds, write_visdial,
)
from annotation_files import broken_copy

SEED, SCENES = 5, 15


@pytest.fixture(scope="module")
def visdial(tmp_path_factory) -> dict:
    summary = write_visdial(tmp_path_factory.mktemp("visdial"), seed=SEED, scenes=SCENES)
    assert {split: s["dialogs"] for split, s in summary["splits"].items()} == {"train": 5, "val": 5, "test": 5}
    return {"root": Path(summary["image_root"]), **{split: Path(s["file"]) for split, s in summary["splits"].items()}}


def scene_indices(split: str) -> list[int]:
    return list(range(("train", "val", "test").index(split), SCENES, 3))


def index_of(record: dict) -> int:
    return record["image_id"] - visdial_image_id(0)


def test_one_record_per_round_in_dialog_order(visdial):
    records = read_visdial(visdial["val"], visdial["root"], "val")
    expected = [(visdial_image_id(i), r + 1) for i in scene_indices("val") for r in range(len(visdial_dialog(SEED, i)[2]))]
    assert [(r["image_id"], r["round"]) for r in records] == expected
    assert [r["id"] for r in records] == [f"visdial:val:{image_id}_{n}" for image_id, n in expected]
    for record in records:
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("visdial", "visual_dialog", "val", "en")


def test_questions_answers_and_captions_are_the_dialogs_own(visdial):
    for record in read_visdial(visdial["train"], visdial["root"], "train"):
        _, caption, rounds = visdial_dialog(SEED, index_of(record))
        assert record["caption"] == caption
        assert (record["question"], record["answer"]) == rounds[record["round"] - 1]
        assert record["answers"] == [record["answer"]]
        assert record["history"] == [{"question": q, "answer": a} for q, a in rounds[: record["round"] - 1]]


def test_answers_are_true_of_the_drawn_scene(visdial):
    checked = 0
    records = [r for split in ("train", "val", "test") for r in read_visdial(visdial[split], visdial["root"], split)]
    for record in records:
        scene, _, _ = visdial_dialog(SEED, index_of(record))
        assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
        if record["answer"] is None:
            continue
        if record["question"] in ("how many shapes are there", "how many objects are in the image"):
            assert record["answer"] == str(len(scene.shapes))
            checked += 1
        for kind in {s.kind for s in scene.shapes}:
            if record["question"] == f"how many {kind}s are there":
                assert record["answer"] == str(sum(s.kind == kind for s in scene.shapes))
                checked += 1
    assert checked >= 5


def test_choices_are_the_answer_options_and_answer_index_points_at_the_answer(visdial):
    records = read_visdial(visdial["val"], visdial["root"], "val")
    native = json.loads(visdial["val"].read_text())["data"]
    for record in records:
        assert len(record["choices"]) == min(100, len(native["answers"]))
        assert record["choices"][record["answer_index"]] == record["answer"]
        assert set(record["choices"]) <= set(native["answers"])


def test_train_images_come_from_both_coco_folders(visdial):
    records = read_visdial(visdial["train"], visdial["root"], "train")
    folders = {Path(r["image"]["path"]).parent.name for r in records}
    assert folders == {"train2014", "val2014"}
    for record in records:
        name = Path(record["image"]["path"]).name
        assert name == f"COCO_{Path(record['image']['path']).parent.name}_{record['image_id']:012d}.jpg"
        assert Image.open(record["image"]["path"]).size == (record["image"]["width"], record["image"]["height"])


def test_test_dialogs_end_with_an_unanswered_round_to_rank(visdial):
    records = read_visdial(visdial["test"], visdial["root"], "test")
    by_dialog: dict[int, list[dict]] = {}
    for record in records:
        by_dialog.setdefault(record["image_id"], []).append(record)
    assert sorted(by_dialog) == [visdial_image_id(i) for i in scene_indices("test")]
    for image_id, rounds in by_dialog.items():
        index = image_id - visdial_image_id(0)
        _, _, truth = visdial_dialog(SEED, index)
        assert len(rounds) == visdial_test_rounds(SEED, index, len(truth))
        *earlier, last = rounds
        assert (last["answer"], last["answers"], last["answer_index"]) == (None, None, None)
        assert truth[len(rounds) - 1][1] in last["choices"]  # the hidden answer is among the options
        assert last["history"] == [{"question": q, "answer": a} for q, a in truth[: len(rounds) - 1]]
        for record in earlier:
            assert record["choices"] is None and record["answer"] == truth[record["round"] - 1][1]
        assert Path(last["image"]["path"]).name == f"VisualDialog_test2018_{image_id:012d}.jpg"


def test_image_name_overrides_the_default_folder(visdial, tmp_path):
    flat = tmp_path / "images"
    flat.mkdir()
    for source in (visdial["root"] / "VisualDialog_val2018").iterdir():
        (flat / source.name.replace("VisualDialog_val2018_", "")).write_bytes(source.read_bytes())
    records = read_visdial(visdial["val"], flat, "val", image_name="{image_id:012d}.jpg")
    assert {Path(r["image"]["path"]).parent for r in records} == {flat}
    with pytest.raises(ValueError, match=r"split 'dev' has no default image folder"):
        read_visdial(visdial["val"], visdial["root"], "dev")


def split_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "split" in r.getMessage()]


@pytest.mark.parametrize("split, says", [("train", "train"), ("val", "val2018"), ("test", "test2018")])
def test_the_split_the_v1_files_name_is_no_cause_for_a_warning(visdial, tmp_path, caplog, split, says):
    # The published files say "train", "val2018" and "test2018" at the top level.
    named = broken_copy(visdial[split], tmp_path, lambda d: d.update({"split": says}))
    with caplog.at_level(logging.WARNING, logger="catalog.adapters.visdial"):
        assert read_visdial(named, visdial["root"], split)
    assert split_warnings(caplog) == []


def test_a_file_of_another_split_read_as_this_one_is_warned_about(visdial, tmp_path, caplog):
    test_file = broken_copy(visdial["val"], tmp_path, lambda d: d.update({"split": "test2018"}))
    with caplog.at_level(logging.WARNING, logger="catalog.adapters.visdial"):
        records = read_visdial(test_file, visdial["root"], "val")
    assert {r["split"] for r in records} == {"val"}
    assert split_warnings(caplog) == [f"{test_file}: the file says split 'test2018'; its records are labelled 'val' as asked"]


DIALOG_0 = r"data\.dialogs\[0\] \(image_id 1001\)"


def first_dialog(d: dict) -> dict:
    return d["data"]["dialogs"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda d: first_dialog(d)["dialog"][2].update({"question": 10**6}),
     r"data\.dialogs\[0\] \(image_id 1001\)\.dialog\[2\]: field 'question' is 1000000; expected an index into data\.questions"),
    (lambda d: first_dialog(d)["dialog"][1].update({"answer": -1}),
     r"data\.dialogs\[0\] \(image_id 1001\)\.dialog\[1\]: field 'answer' is -1; expected an index into data\.answers"),
    (lambda d: first_dialog(d)["dialog"][0]["answer_options"].__setitem__(3, 10**6),
     DIALOG_0 + r"\.dialog\[0\]: answer_options\[3\] is 1000000; expected an index into data\.answers"),
    (lambda d: first_dialog(d)["dialog"][0].update({"gt_index": 500}),
     DIALOG_0 + r"\.dialog\[0\]: field 'gt_index' is 500; expected an index into its \d+ answer_options"),
    (lambda d: first_dialog(d)["dialog"][0].update({"gt_index": (first_dialog(d)["dialog"][0]["gt_index"] + 1) % 10}),
     DIALOG_0 + r"\.dialog\[0\]: answer_options\[gt_index=\d+\] is answer \d+, but field 'answer' is \d+"),
    (lambda d: first_dialog(d)["dialog"][0].pop("gt_index"), DIALOG_0 + r"\.dialog\[0\]: missing field 'gt_index'"),
    (lambda d: first_dialog(d)["dialog"][0].pop("answer"),
     DIALOG_0 + r"\.dialog\[0\]: missing field 'answer' \(only a dialog's last round may lack it\)"),
    (lambda d: first_dialog(d)["dialog"][0].update({"question": "is it red"}),
     DIALOG_0 + r"\.dialog\[0\]: field 'question' is a string .*expected an integer"),
    (lambda d: first_dialog(d).pop("caption"), r"data\.dialogs\[0\] \(image_id 1001\): missing field 'caption'"),
    (lambda d: first_dialog(d).update({"image_id": "1001"}), r"data\.dialogs\[0\]: field 'image_id' is a string"),
    (lambda d: first_dialog(d).update({"image_id": 4242}),
     r"data\.dialogs\[0\] \(image_id 4242\): image_id 4242, but there is no image at .*VisualDialog_val2018_000000004242\.jpg"),
    (lambda d: d["data"]["answers"].__setitem__(first_dialog(d)["dialog"][0]["answer"], None),
     r"data\.answers\[\d+\] is None; expected a string"),
    (lambda d: d["data"].pop("questions"), r"data: missing field 'questions'"),
    (lambda d: d.pop("data"), r"top level: missing field 'data'"),
])
def test_a_malformed_file_names_file_dialog_round_and_field(visdial, tmp_path, edit, message):
    broken = broken_copy(visdial["val"], tmp_path, edit)
    with pytest.raises(AnnotationError, match=r"visdial_1\.0_val\.json: " + message):
        read_visdial(broken, visdial["root"], "val")


def test_a_train_image_in_neither_coco_folder_names_both_paths(visdial, tmp_path):
    broken = broken_copy(visdial["train"], tmp_path, lambda d: first_dialog(d).update({"image_id": 4242}))
    with pytest.raises(AnnotationError, match=r"image_id 4242 has no image \(tried .*train2014/COCO_train2014_000000004242\.jpg, .*val2014/COCO_val2014_000000004242\.jpg\)"):
        read_visdial(broken, visdial["root"], "train")


def test_a_file_that_is_not_json_is_named(visdial, tmp_path):
    broken = tmp_path / "visdial_1.0_val.json"
    broken.write_text(visdial["val"].read_text()[:200])
    with pytest.raises(AnnotationError, match=r"visdial_1\.0_val\.json: not valid JSON"):
        read_visdial(broken, visdial["root"], "val")


def test_the_visdial_card_names_the_reader():
    module, _, attribute = get_card("visdial")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_visdial
