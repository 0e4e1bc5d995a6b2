"""VSR zero-shot JSONL files read into canonical true/false statement records."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.vsr import read_vsr
from catalog.cards import get_card
from pipelines.shapes_world.formats.vsr import SPLITS, image_name, scene_statements, vsr_scene, write_vsr
from pipelines.shapes_world.scenes import MIN_SEPARATION

SEED, SCENES = 1, 9


@pytest.fixture(scope="module")
def vsr(tmp_path_factory) -> dict:
    summary = write_vsr(tmp_path_factory.mktemp("vsr"), seed=SEED, scenes=SCENES)
    assert summary["files"] == {f"{split}.jsonl": 2 * SCENES // 3 for split in SPLITS}
    return {"annotations": Path(summary["annotation_dir"]), "images": Path(summary["image_root"])}


def shape_named(scene, name: str):
    (shape,) = [s for s in scene.shapes if s.name == name]
    return shape


def rewrite(source: Path, tmp_path: Path, lines: list[str]) -> Path:
    target = tmp_path / source.name
    target.write_text("".join(line + "\n" for line in lines))
    return target


def test_each_split_gives_one_record_per_line_with_its_line_number_as_id(vsr):
    for split in SPLITS:
        records = read_vsr(vsr["annotations"] / f"{split}.jsonl", vsr["images"], split)
        assert [r["id"] for r in records] == [f"vsr:{split}:{n}" for n in range(1, 2 * SCENES // 3 + 1)]
        for record in records:
            assert (record["dataset"], record["task"], record["split"], record["lang"]) == (
                "vsr", "visual_reasoning", split, "en")


def test_statements_and_labels_agree_with_the_scene_geometry(vsr):
    records = read_vsr(vsr["annotations"] / "test.jsonl", vsr["images"], "test")
    scene_indexes = [i for i in range(SCENES) if SPLITS[i % 3] == "test" for _ in range(2)]
    assert {r["label"] for r in records} == {0, 1}
    for record, index in zip(records, scene_indexes):
        scene, _ = vsr_scene(SEED, index)
        subj, obj = shape_named(scene, record["subj"]), shape_named(scene, record["obj"])
        assert record["caption"] == f"The {subj.name} is {record['relation']} the {obj.name}."
        holds = {
            "left of": subj.x1 + MIN_SEPARATION <= obj.x0,
            "right of": obj.x1 + MIN_SEPARATION <= subj.x0,
            "above": subj.y1 + MIN_SEPARATION <= obj.y0,
            "below": obj.y1 + MIN_SEPARATION <= subj.y0,
        }[record["relation"]]
        assert record["label"] == int(holds) and record["answer"] == ("true" if holds else "false")
        assert Path(record["image"]["path"]).name == image_name(index)
        assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
        assert Image.open(record["image"]["path"]).size == (scene.width, scene.height)


def test_each_scene_has_one_true_and_one_false_statement(vsr):
    for index in range(SCENES):
        assert sorted(s["label"] for s in scene_statements(SEED, index)) == [0, 1]


def test_images_are_found_in_coco_folders_through_image_link(vsr, tmp_path):
    for index in range(SCENES):
        folder = "val2017" if index % 3 == 2 else "train2017"
        (tmp_path / folder).mkdir(exist_ok=True)
        shutil.copy(vsr["images"] / image_name(index), tmp_path / folder / image_name(index))
    records = read_vsr(vsr["annotations"] / "test.jsonl", tmp_path, "test")
    assert {Path(r["image"]["path"]).parent.name for r in records} == {"val2017"}
    assert {Path(r["image"]["path"]).parent.name for r in read_vsr(
        vsr["annotations"] / "train.jsonl", tmp_path, "train")} == {"train2017"}


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("caption"), r"line 2: missing field 'caption'"),
    (lambda r: r.update({"label": "True"}), r"line 2: field 'label' is a string .*expected an integer"),
    (lambda r: r.update({"label": 2}), r"line 2: field 'label' is 2; expected 1 \(true\) or 0 \(false\)"),
    (lambda r: r.pop("relation"), r"line 2: missing field 'relation'"),
    (lambda r: r.update({"image": "000000000001.jpg", "image_link": "http://x/train2017/000000000001.jpg"}),
     r"line 2: field 'image' names '000000000001\.jpg', but there is no image"),
])
def test_a_malformed_line_names_file_line_and_field(vsr, tmp_path, edit, message):
    lines = (vsr["annotations"] / "dev.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    edit(row)
    lines[1] = json.dumps(row)
    broken = rewrite(vsr["annotations"] / "dev.jsonl", tmp_path, lines)
    with pytest.raises(AnnotationError, match=r"dev\.jsonl: " + message):
        read_vsr(broken, vsr["images"], "dev")


def test_a_line_that_is_not_json_names_the_file_and_line(vsr, tmp_path):
    lines = (vsr["annotations"] / "train.jsonl").read_text().splitlines()
    broken = rewrite(vsr["annotations"] / "train.jsonl", tmp_path, lines[:3] + ['{"image": '] + lines[3:])
    with pytest.raises(AnnotationError, match=r"train\.jsonl: line 4: not valid JSON"):
        read_vsr(broken, vsr["images"], "train")


def test_the_vsr_card_names_the_reader():
    module, _, attribute = get_card("vsr")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_vsr


def test_the_vsr_card_sizes_are_the_lines_of_the_zero_shot_files_it_names():
    # Counted in cambridgeltl/visual-spatial-reasoning data/splits/zeroshot/ (b27a0af); the README's
    # 4,713 / 231 / 616 for the zero-shot split matches no published version of these files.
    card = get_card("vsr")
    assert all(f.startswith("data/splits/zeroshot/") for f in card["native_format"]["files"])
    assert {split: s["size"] for split, s in card["splits"].items()} == {"train": 3489, "dev": 340, "test": 1222}
