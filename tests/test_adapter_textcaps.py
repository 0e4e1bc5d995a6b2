"""TextCaps 0.1 + Rosetta OCR: the shapes-world fixture read back through catalog.adapters.textcaps."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.textcaps import read_textcaps
from catalog.cards import get_card
from pipelines.shapes_world.draw import COLOUR_RGB
from pipelines.shapes_world.formats.textcaps import textcaps_image_id, textcaps_scene, write_textcaps
from annotation_files import broken_copy

SEED = 8
SCENES = 6


@pytest.fixture(scope="module")
def textcaps(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("textcaps")
    write_textcaps(out, seed=SEED, scenes=SCENES)
    return out


def files(root: Path, split: str) -> tuple[Path, Path]:
    return root / f"TextCaps_0.1_{split}.json", root / f"TextVQA_Rosetta_OCR_v0.2_{split}.json"


def folder(root: Path, split: str) -> Path:
    return root / ("test_images" if split == "test" else "train_images")


def read(root: Path, split: str, with_ocr: bool = True) -> list[dict]:
    captions, ocr = files(root, split)
    return read_textcaps(captions, folder(root, split), split, ocr_file=ocr if with_ocr else None)


def scene_of(record: dict, split: str):
    image_id = Path(record["image"]["path"]).stem
    index = next(i for i in range(SCENES) if textcaps_image_id(SEED, split, i) == image_id)
    return textcaps_scene(SEED, split, index)


def test_textcaps_gives_one_record_per_caption_with_its_references(textcaps):
    captions, _ = files(textcaps, "val")
    native = json.loads(captions.read_text())
    assert list(native)[3] == "data"  # LAVIS takes the fourth top-level key
    records = read(textcaps, "val")
    assert len(records) == len(native["data"]) == 5 * SCENES
    for record, row in zip(records, native["data"]):
        assert record["id"] == f"textcaps:val:{row['caption_id']}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("textcaps", "captioning_reading", "val", "en")
        assert record["caption"] == row["caption_str"]
        assert record["answers"] == row["reference_strs"] and record["caption"] in record["answers"]
        assert (record["image"]["width"], record["image"]["height"]) == (row["image_width"], row["image_height"])
        with Image.open(record["image"]["path"]) as image:
            assert image.size == (row["image_width"], row["image_height"])


def test_textcaps_captions_and_ocr_tokens_name_the_words_drawn(textcaps):
    for split in ("train", "val"):
        for record in read(textcaps, split):
            scene, words, _ = scene_of(record, split)
            assert record["ocr_tokens"] == [word for word, _ in words]
            for word, colour in words:
                assert f'"{word}" in {colour}' in record["caption"]
            caption = record["caption"].lower()
            assert all(s.colour in caption and s.kind in caption for s in scene.shapes)


def test_textcaps_words_are_drawn_in_their_colour_inside_their_ocr_box(textcaps):
    _, ocr = files(textcaps, "val")
    for index, entry in enumerate(json.loads(ocr.read_text())["data"]):
        scene, words, _ = textcaps_scene(SEED, "val", index)
        with Image.open(folder(textcaps, "val") / f"{entry['image_id']}.jpg") as opened:
            image = opened.convert("RGB")
        width, height = image.size
        for info, (word, colour) in zip(entry["ocr_info"], words):
            box = info["bounding_box"]
            x0, y0 = round(box["top_left_x"] * width), round(box["top_left_y"] * height)
            x1, y1 = x0 + round(box["width"] * width), y0 + round(box["height"] * height)
            assert y0 >= scene.height  # in the band under the scene, as the captions say
            inked = [image.getpixel((x, y)) for x in range(x0, x1) for y in range(y0, y1)]
            close = [p for p in inked if sum((a - b) ** 2 for a, b in zip(p, COLOUR_RGB[colour])) < 80**2]
            assert len(close) > 0.04 * len(inked), f"{word!r} in {colour} is not drawn in its OCR box"


def test_textcaps_test_split_has_one_record_per_image_without_captions(textcaps):
    records = read(textcaps, "test")
    assert [r["id"] for r in records] == [f"textcaps:test:{textcaps_image_id(SEED, 'test', i)}" for i in range(SCENES)]
    assert all(r["caption"] is None and r["answers"] is None for r in records)
    assert all(r["ocr_tokens"] == [w for w, _ in scene_of(r, "test")[1]] for r in records)
    assert all(Path(r["image"]["path"]).parent.name == "test_images" for r in records)


def test_textcaps_without_an_ocr_file_has_no_tokens(textcaps):
    records = read(textcaps, "train", with_ocr=False)
    assert records and all(r["ocr_tokens"] is None for r in records)


def test_textcaps_missing_caption_str_names_file_row_and_field(textcaps, tmp_path):
    captions, _ = files(textcaps, "train")

    def drop_caption(data):
        del data["data"][3]["caption_str"]

    broken = broken_copy(captions, tmp_path, drop_caption)
    with pytest.raises(AnnotationError, match=r"TextCaps_0\.1_train\.json: data\[3\]: missing field 'caption_str'"):
        read_textcaps(broken, folder(textcaps, "train"), "train")


def test_textcaps_reference_of_the_wrong_type_is_named(textcaps, tmp_path):
    captions, _ = files(textcaps, "val")

    def number_reference(data):
        data["data"][2]["reference_strs"][1] = 7

    broken = broken_copy(captions, tmp_path, number_reference)
    with pytest.raises(AnnotationError, match=r"TextCaps_0\.1_val\.json: data\[2\]: reference_strs\[1\] is 7; expected a string"):
        read_textcaps(broken, folder(textcaps, "val"), "val")


def test_textcaps_caption_whose_image_is_missing_is_named(textcaps, tmp_path):
    captions, _ = files(textcaps, "val")

    def point_elsewhere(data):
        data["data"][6]["image_id"] = "ffffffffffffffff"

    broken = broken_copy(captions, tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=r"TextCaps_0\.1_val\.json: data\[6\]: image_id 'ffffffffffffffff' has no image"):
        read_textcaps(broken, folder(textcaps, "val"), "val")


def test_textcaps_image_without_ocr_entry_is_named(textcaps, tmp_path):
    captions, ocr = files(textcaps, "val")

    def drop_first(data):
        data["data"].pop(0)

    broken = broken_copy(ocr, tmp_path, drop_first)
    with pytest.raises(AnnotationError, match=r"TextVQA_Rosetta_OCR_v0\.2_val\.json: no OCR entry for image_id '[0-9a-f]{16}' \(TextCaps_0\.1_val\.json data\[0\]\)"):
        read_textcaps(captions, folder(textcaps, "val"), "val", ocr_file=broken)


def test_textcaps_file_without_data_or_not_json_is_named(tmp_path):
    wrong = tmp_path / "TextCaps_0.1_val.json"
    wrong.write_text('{"dataset_type": "val", "dataset_name": "textcaps", "dataset_version": 0.1}')
    with pytest.raises(AnnotationError, match=r"TextCaps_0\.1_val\.json: top level: missing field 'data'"):
        read_textcaps(wrong, tmp_path, "val")
    wrong.write_text('{"data": [\n{"image_id": ')
    with pytest.raises(AnnotationError, match=r"TextCaps_0\.1_val\.json: not valid JSON .*line 2"):
        read_textcaps(wrong, tmp_path, "val")


def test_textcaps_card_names_this_adapter():
    module, _, attribute = get_card("textcaps")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_textcaps
