"""LLaVA-Instruct-150K JSON files read into canonical conversation records."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.llava_instruct import (
    read_llava_complex_reasoning,
    read_llava_conversation,
    read_llava_detail,
    read_llava_instruct,
)
from catalog.cards import get_card
from pipelines.shapes_world.formats.llava_instruct import (
    MERGED_FILE,
    PART_FILES,
    image_id,
    llava_scene,
    scene_conversations,
    write_llava_instruct,
)
from annotation_files import broken_copy

SEED, SCENES = 6, 8
READERS = {
    "llava_conversation": read_llava_conversation,
    "llava_detail": read_llava_detail,
    "llava_complex_reasoning": read_llava_complex_reasoning,
}


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llava")
    summary = write_llava_instruct(out, seed=SEED, scenes=SCENES)
    assert summary["files"] == {**{name: SCENES for name in PART_FILES.values()}, MERGED_FILE: 3 * SCENES}
    return out


@pytest.mark.parametrize("dataset", list(PART_FILES))
def test_each_part_gives_one_record_per_entry_with_the_scene_s_true_turns(llava, dataset):
    records = READERS[dataset](llava / PART_FILES[dataset], llava / "train2017", "train")
    assert [r["id"] for r in records] == [f"{dataset}:train:{image_id(i)}" for i in range(SCENES)]
    for index, record in enumerate(records):
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == (
            dataset, "llava_instruct", "train", "en")
        pairs = scene_conversations(SEED, index)[dataset]
        expected = []
        for n, (question, answer) in enumerate(pairs):
            expected.append({"role": "user", "content": f"<image>\n{question}" if n == 0 else question})
            expected.append({"role": "assistant", "content": answer})
        assert record["messages"] == expected


def test_image_token_is_moved_to_the_start_whichever_side_llava_put_it(llava):
    native = json.loads((llava / PART_FILES["llava_conversation"]).read_text())
    assert native[1]["conversations"][0]["value"].endswith("\n<image>")
    records = read_llava_conversation(llava / PART_FILES["llava_conversation"], llava / "train2017", "train")
    for record in records:
        contents = [m["content"] for m in record["messages"]]
        assert contents[0].startswith("<image>\n") and sum(c.count("<image>") for c in contents) == 1
        assert not contents[0].endswith("\n")


def true_answer(scene, question: str) -> str | None:
    """The answer read off the scene for the question forms this test knows, else None."""
    shapes = scene.shapes
    if question in ("How many shapes are there?", "How many objects are in the image?"):
        return str(len(shapes))
    for shape in shapes:
        if question in (f"What color is the {shape.kind}?", f"What is the color of the {shape.kind}?",
                        f"Which color is the {shape.kind}?"):
            return shape.colour
        if question in (f"What shape is the {shape.colour} object?", f"Which shape is {shape.colour}?"):
            return shape.kind
    for colour in {s.colour for s in shapes} | {"red", "blue"}:
        if question == f"How many {colour} shapes are there?":
            return str(sum(s.colour == colour for s in shapes))
    return None


def test_conversation_answers_are_true_of_the_drawn_scene(llava):
    records = read_llava_conversation(llava / PART_FILES["llava_conversation"], llava / "train2017", "train")
    checked = 0
    for index, record in enumerate(records):
        scene, _ = llava_scene(SEED, index)
        questions = [m["content"].removeprefix("<image>\n") for m in record["messages"][::2]]
        answers = [m["content"] for m in record["messages"][1::2]]
        for question, answer in zip(questions, answers):
            if (truth := true_answer(scene, question)) is not None:
                assert answer == truth, (index, question)
                checked += 1
    assert checked >= SCENES


def test_detail_and_reasoning_answers_describe_the_scene(llava):
    detail = read_llava_detail(llava / PART_FILES["llava_detail"], llava / "train2017", "train")
    reasoning = read_llava_complex_reasoning(
        llava / PART_FILES["llava_complex_reasoning"], llava / "train2017", "train")
    for index in range(SCENES):
        scene, rng = llava_scene(SEED, index)
        assert detail[index]["messages"][1]["content"].endswith(".")
        assert reasoning[index]["messages"][1]["content"].endswith(f"it would show {len(scene.shapes) + 1}.")
        for shape in scene.shapes:
            assert shape.colour in detail[index]["messages"][1]["content"]


def test_images_are_absolute_with_true_sizes(llava, monkeypatch):
    monkeypatch.chdir(llava)
    records = read_llava_detail(llava / PART_FILES["llava_detail"], "train2017", "train")
    for index, record in enumerate(records):
        scene, _ = llava_scene(SEED, index)
        path = Path(record["image"]["path"])
        assert path.is_absolute() and path.name == f"{image_id(index)}.jpg"
        assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
        assert Image.open(path).size == (scene.width, scene.height)


def test_the_merged_file_keeps_every_record_with_unique_ids(llava):
    records = read_llava_instruct(llava / MERGED_FILE, llava / "train2017", "train", "llava_conversation")
    assert len(records) == 3 * SCENES == len({r["id"] for r in records})
    assert records[SCENES]["id"] == f"llava_conversation:train:{image_id(0)}#{SCENES}"


def test_an_unknown_dataset_name_is_refused(llava):
    with pytest.raises(ValueError, match="llava_detail"):
        read_llava_instruct(llava / MERGED_FILE, llava / "train2017", "train", "llava_instruct")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d[3]["conversations"][1].update({"from": "human"}),
     r"\[3\]\.conversations\[1\]: field 'from' is 'human'; expected 'gpt'"),
    (lambda d: d[2]["conversations"].reverse(),
     r"\[2\]\.conversations\[0\]: field 'from' is 'gpt'; expected 'human'"),
    (lambda d: d[4]["conversations"].pop(),
     r"\[4\]\.conversations\[\d+\]: the conversation ends on a human turn"),
    (lambda d: d[1]["conversations"][0].update({"value": "What is this?"}),
     r"\[1\]\.conversations\[0\]: field 'value' holds '<image>' 0 times"),
    (lambda d: d[0]["conversations"][0].update({"value": "<image>\n<image>\nWhat is this?"}),
     r"\[0\]\.conversations\[0\]: field 'value' holds '<image>' 2 times"),
    (lambda d: d[0]["conversations"][2].update({"value": "<image>\nAnd this?"}),
     r"\[0\]\.conversations\[2\]: field 'value' holds '<image>'; only the first human turn may"),
    (lambda d: d[5]["conversations"][1].pop("value"),
     r"\[5\]\.conversations\[1\]: missing field 'value'"),
    (lambda d: d[5].update({"conversations": []}),
     r"\[5\]: field 'conversations' is empty"),
    (lambda d: d[6].pop("image"), r"\[6\]: missing field 'image'"),
    (lambda d: d[6].update({"id": None}), r"\[6\]: field 'id' is None"),
    (lambda d: d[7].update({"image": "000000999999.jpg"}),
     r"\[7\]: field 'image' names '000000999999\.jpg', but there is no image"),
])
def test_a_malformed_conversation_names_file_row_and_turn(llava, tmp_path, edit, message):
    broken = broken_copy(llava / PART_FILES["llava_conversation"], tmp_path, edit)
    with pytest.raises(AnnotationError, match=r"conversation_58k\.json: " + message):
        read_llava_conversation(broken, llava / "train2017", "train")


def test_a_file_that_is_not_a_json_list_is_named(tmp_path):
    (tmp_path / "detail_23k.json").write_text('[{"id": "1",')
    with pytest.raises(AnnotationError, match=r"detail_23k\.json: not valid JSON"):
        read_llava_detail(tmp_path / "detail_23k.json", tmp_path, "train")
    (tmp_path / "detail_23k.json").write_text('{"id": "1"}')
    with pytest.raises(AnnotationError, match=r"detail_23k\.json: top level is an object; expected a list of conversations"):
        read_llava_detail(tmp_path / "detail_23k.json", tmp_path, "train")


def test_each_llava_card_names_its_reader():
    for dataset, reader in READERS.items():
        module, _, attribute = get_card(dataset)["adapter"].rpartition(".")
        assert getattr(importlib.import_module(module), attribute) is reader
