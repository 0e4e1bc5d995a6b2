"""ScienceQA problems.json read into canonical multiple-choice records, image problems only."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.scienceqa import read_scienceqa
from catalog.cards import get_card
from pipelines.shapes_world.formats.scienceqa import image_problem, scienceqa_scene, write_scienceqa
from annotation_files import broken_copy

SEED, SCENES = 2, 12


@pytest.fixture(scope="module")
def sqa(tmp_path_factory) -> dict:
    summary = write_scienceqa(tmp_path_factory.mktemp("scienceqa"), seed=SEED, scenes=SCENES)
    assert summary["with_image"] == SCENES and summary["problems"] == SCENES + SCENES // 2
    return {k: Path(v) for k, v in summary.items() if k.endswith(("_file", "_root"))}


def scene_index(record: dict) -> int:
    return (int(record["id"].rsplit(":", 1)[1]) - 1) // 2


def true_answer(scene, question: str) -> str | None:
    """The answer read off the scene's shapes for the colour, shape, count and exists forms, else None."""
    shapes = scene.shapes
    if question in ("How many shapes are there?", "How many objects are in the image?"):
        return str(len(shapes))
    for kind in {s.kind for s in shapes}:
        colours = {s.colour for s in shapes if s.kind == kind}
        if question in (f"What color is the {kind}?", f"What is the color of the {kind}?",
                        f"Which color is the {kind}?", f"What color are the {kind}s?"):
            return colours.pop()
    for colour in {s.colour for s in shapes}:
        if question in (f"What shape is the {colour} object?", f"What is the shape of the {colour} object?",
                        f"Which shape is {colour}?", f"What shape are the {colour} objects?"):
            return {s.kind for s in shapes if s.colour == colour}.pop()
    words = question.rstrip("?").split()
    if question.startswith("How many ") and question.endswith(" are there?"):
        asked = words[2:-2]  # e.g. ["red", "shapes"], ["stars"], ["red", "stars"]
        def matches(s):
            return all(w in (s.colour, s.kind + "s", "shapes") for w in asked)
        return str(sum(matches(s) for s in shapes))
    if question.startswith(("Is there a", "Do you see a")):
        colour, kind = [w for w in words if w in {"red", "green", "blue", "yellow", "purple", "orange",
                                                  "circle", "square", "triangle", "star", "hexagon"}]
        return "yes" if any((s.colour, s.kind) == (colour, kind) for s in shapes) else "no"
    return None


def test_each_split_keeps_its_image_problems_in_file_order(sqa):
    for number, split in enumerate(("train", "val", "test")):
        records = read_scienceqa(sqa["problems_file"], sqa["image_root"], split)
        assert [r["id"] for r in records] == [f"scienceqa:{split}:{2 * i + 1}" for i in range(number, SCENES, 3)]
        for record in records:
            assert (record["dataset"], record["task"], record["split"], record["lang"]) == (
                "scienceqa", "knowledge_vqa", split, "en")


def test_problems_without_an_image_are_skipped_and_counted_in_the_log(sqa, caplog):
    native = json.loads(sqa["problems_file"].read_text())
    train_text_only = [pid for pid, p in native.items() if p["split"] == "train" and p["image"] is None]
    assert train_text_only
    with caplog.at_level(logging.INFO, logger="catalog.adapters.scienceqa"):
        records = read_scienceqa(sqa["problems_file"], sqa["image_root"], "train")
    assert not {r["id"].rsplit(":", 1)[1] for r in records} & set(train_text_only)
    assert f"{len(records)} with an image kept, {len(train_text_only)} without an image skipped" in caplog.text


def test_the_answer_is_the_one_true_choice(sqa):
    records = read_scienceqa(sqa["problems_file"], sqa["image_root"], "test")
    for record in records:
        problem, truth = image_problem(SEED, scene_index(record))
        assert record["question"] == problem["question"] and record["choices"] == problem["choices"]
        assert record["answer"] == record["choices"][record["answer_index"]] == truth
        assert record["answers"] == [truth] and record["choices"].count(truth) == 1
        assert (record["hint"], record["lecture"], record["solution"]) == (
            problem["hint"], problem["lecture"], problem["solution"])


def test_answers_match_the_drawn_scene(sqa):
    checked = 0
    for split in ("train", "val", "test"):
        for record in read_scienceqa(sqa["problems_file"], sqa["image_root"], split):
            scene, _ = scienceqa_scene(SEED, scene_index(record))
            if (truth := true_answer(scene, record["question"])) is not None:
                assert record["answer"] == truth, record["question"]
                checked += 1
            assert Path(record["image"]["path"]).parts[-3:] == (split, record["id"].rsplit(":", 1)[1], "image.png")
            assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
            assert Image.open(record["image"]["path"]).size == (scene.width, scene.height)
    assert checked >= SCENES // 2


def test_pid_splits_picks_the_problems_and_finds_images_in_their_own_split(sqa):
    splits = json.loads(sqa["splits_file"].read_text())
    records = read_scienceqa(sqa["problems_file"], sqa["image_root"], "minitest", splits_file=sqa["splits_file"])
    with_image = [pid for pid in splits["minitest"] if int(pid) % 2 == 1]
    assert [r["id"] for r in records] == [f"scienceqa:minitest:{pid}" for pid in with_image]
    assert all(Path(r["image"]["path"]).parts[-3] == "test" for r in records)
    trainval = read_scienceqa(sqa["problems_file"], sqa["image_root"], "trainval", splits_file=sqa["splits_file"])
    assert len(trainval) == len(read_scienceqa(sqa["problems_file"], sqa["image_root"], "train")) + len(
        read_scienceqa(sqa["problems_file"], sqa["image_root"], "val"))


def test_an_unknown_split_lists_the_known_ones(sqa):
    with pytest.raises(AnnotationError, match=r"problems\.json: no problem has split 'minitest' \(splits in the file: test, train, val\)"):
        read_scienceqa(sqa["problems_file"], sqa["image_root"], "minitest")
    with pytest.raises(AnnotationError, match=r"pid_splits\.json: no split 'dev'"):
        read_scienceqa(sqa["problems_file"], sqa["image_root"], "dev", splits_file=sqa["splits_file"])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["1"].pop("choices"), r"problem '1': missing field 'choices'"),
    (lambda d: d["1"].update({"answer": 7}), r"problem '1': field 'answer' is 7; expected an index into its \d choices"),
    (lambda d: d["1"].update({"answer": "0"}), r"problem '1': field 'answer' is a string .*expected an integer"),
    (lambda d: d["1"]["choices"].__setitem__(0, 3), r"problem '1': choices\[0\] is 3; expected a string"),
    (lambda d: d["1"].pop("image"), r"problem '1': missing field 'image'"),
    (lambda d: d["1"].update({"image": "diagram.png"}), r"problem '1': field 'image' is 'diagram\.png', but there is no image"),
    (lambda d: d["1"].update({"hint": None}), r"problem '1': field 'hint' is null"),
    (lambda d: d["1"].pop("split"), r"problem '1': missing field 'split'"),
])
def test_a_malformed_problem_names_file_pid_and_field(sqa, tmp_path, edit, message):
    broken = broken_copy(sqa["problems_file"], tmp_path, edit)
    with pytest.raises(AnnotationError, match=r"problems\.json: " + message):
        read_scienceqa(broken, sqa["image_root"], "train")


def test_a_split_list_naming_an_unknown_problem_is_named(sqa, tmp_path):
    broken = broken_copy(sqa["splits_file"], tmp_path, lambda d: d["test"].insert(1, "4242"))
    with pytest.raises(AnnotationError, match=r"pid_splits\.json: test\[1\]: problem id '4242' is not in"):
        read_scienceqa(sqa["problems_file"], sqa["image_root"], "test", splits_file=broken)


def test_the_scienceqa_card_names_the_reader():
    module, _, attribute = get_card("scienceqa")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_scienceqa
