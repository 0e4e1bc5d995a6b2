"""TextVQA 0.5.1 + Rosetta OCR: the shapes-world fixture read back through catalog.adapters.textvqa."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.textvqa import read_textvqa
from catalog.cards import get_card
from pipelines.shapes_world.draw import COLOUR_RGB
from pipelines.shapes_world.formats.textvqa import textvqa_image_id, textvqa_scene, write_textvqa
from annotation_files import broken_copy

SEED = 7
SCENES = 8


@pytest.fixture(scope="module")
def textvqa(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("textvqa")
    write_textvqa(out, seed=SEED, scenes=SCENES)
    return out


def files(root: Path, split: str) -> tuple[Path, Path]:
    return root / f"TextVQA_0.5.1_{split}.json", root / f"TextVQA_Rosetta_OCR_v0.2_{split}.json"


def read(root: Path, split: str, with_ocr: bool = True) -> list[dict]:
    questions, ocr = files(root, split)
    folder = "test_images" if split == "test" else "train_images"
    return read_textvqa(questions, root / folder, split, ocr_file=ocr if with_ocr else None)


def words_of(record: dict, split: str) -> list[tuple[str, str]]:
    image_id = Path(record["image"]["path"]).stem
    index = next(i for i in range(SCENES) if textvqa_image_id(SEED, split, i) == image_id)
    return textvqa_scene(SEED, split, index)[1]


def test_textvqa_gives_one_record_per_question(textvqa):
    questions, _ = files(textvqa, "val")
    native = json.loads(questions.read_text())["data"]
    records = read(textvqa, "val")
    assert len(records) == len(native) >= SCENES
    for record, row in zip(records, native):
        assert record["id"] == f"textvqa:val:{row['question_id']}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("textvqa", "reading_vqa", "val", "en")
        assert record["question"] == row["question"]
        assert record["answers"] == row["answers"] and len(record["answers"]) == 10
        assert record["answer"] == Counter(row["answers"]).most_common(1)[0][0]
        assert (record["image"]["width"], record["image"]["height"]) == (row["image_width"], row["image_height"])


def test_textvqa_answers_and_ocr_tokens_are_the_words_drawn(textvqa):
    for split in ("train", "val"):
        for record in read(textvqa, split):
            words = words_of(record, split)
            assert record["ocr_tokens"] == [word for word, _ in words]
            if len(words) == 1:
                assert record["answer"] == words[0][0]
            elif record["question"] == "what is the word on the right?":
                assert record["answer"] == words[1][0]
            else:
                colour = record["question"].removeprefix("what word is written in ").rstrip("?")
                assert record["answer"] == dict((c, w) for w, c in words)[colour]


def test_textvqa_ocr_boxes_hold_the_word_in_its_colour(textvqa):
    _, ocr = files(textvqa, "train")
    entries = json.loads(ocr.read_text())["data"]
    for index, entry in enumerate(entries):
        words = textvqa_scene(SEED, "train", index)[1]
        with Image.open(textvqa / "train_images" / f"{entry['image_id']}.jpg") as opened:
            image = opened.convert("RGB")
        width, height = image.size
        for info, (word, colour) in zip(entry["ocr_info"], words):
            assert info["word"] == word
            box = info["bounding_box"]
            x0, y0 = round(box["top_left_x"] * width), round(box["top_left_y"] * height)
            x1, y1 = x0 + round(box["width"] * width), y0 + round(box["height"] * height)
            assert y0 > height * 0.6  # in the band under the scene
            inked = [image.getpixel((x, y)) for x in range(x0, x1) for y in range(y0, y1)]
            target = COLOUR_RGB[colour]
            close = [p for p in inked if sum((a - b) ** 2 for a, b in zip(p, target)) < 80**2]
            assert len(close) > 0.04 * len(inked), f"{word!r} in {colour} is not drawn in its OCR box"


def test_textvqa_without_an_ocr_file_has_no_tokens(textvqa):
    records = read(textvqa, "val", with_ocr=False)
    assert records and all(r["ocr_tokens"] is None for r in records)


def test_textvqa_test_split_has_no_answers_but_has_tokens(textvqa):
    records = read(textvqa, "test")
    assert records and all(r["answer"] is None and r["answers"] is None for r in records)
    assert all(r["ocr_tokens"] == [w for w, _ in words_of(r, "test")] for r in records)
    assert all(Path(r["image"]["path"]).parent.name == "test_images" for r in records)


def test_textvqa_missing_answers_field_names_file_row_and_field(textvqa, tmp_path):
    questions, _ = files(textvqa, "train")

    def drop_answers(data):
        del data["data"][3]["answers"]

    broken = broken_copy(questions, tmp_path, drop_answers)
    with pytest.raises(AnnotationError, match=r"TextVQA_0\.5\.1_train\.json: data\[3\]: missing field 'answers'"):
        read_textvqa(broken, textvqa / "train_images", "train")


def test_textvqa_question_id_of_the_wrong_type_is_named(textvqa, tmp_path):
    questions, _ = files(textvqa, "train")

    def string_id(data):
        data["data"][1]["question_id"] = "1"

    broken = broken_copy(questions, tmp_path, string_id)
    with pytest.raises(AnnotationError, match=r"data\[1\]: field 'question_id' is a string .*expected an integer"):
        read_textvqa(broken, textvqa / "train_images", "train")


def test_textvqa_question_whose_image_is_missing_is_named(textvqa, tmp_path):
    questions, _ = files(textvqa, "val")

    def point_elsewhere(data):
        data["data"][2]["image_id"] = "ffffffffffffffff"

    broken = broken_copy(questions, tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=r"TextVQA_0\.5\.1_val\.json: data\[2\]: image_id 'ffffffffffffffff' has no image"):
        read_textvqa(broken, textvqa / "train_images", "val")


def test_textvqa_image_without_ocr_entry_is_named(textvqa, tmp_path):
    questions, ocr = files(textvqa, "val")

    def drop_first(data):
        data["data"].pop(0)

    broken = broken_copy(ocr, tmp_path, drop_first)
    with pytest.raises(AnnotationError, match=r"TextVQA_Rosetta_OCR_v0\.2_val\.json: no OCR entry for image_id '[0-9a-f]{16}' \(TextVQA_0\.5\.1_val\.json data\[0\]\)"):
        read_textvqa(questions, textvqa / "train_images", "val", ocr_file=broken)


def test_textvqa_ocr_entry_without_tokens_is_named(textvqa, tmp_path):
    questions, ocr = files(textvqa, "val")

    def drop_tokens(data):
        del data["data"][1]["ocr_tokens"]

    broken = broken_copy(ocr, tmp_path, drop_tokens)
    with pytest.raises(AnnotationError, match=r"TextVQA_Rosetta_OCR_v0\.2_val\.json: data\[1\]: missing field 'ocr_tokens'"):
        read_textvqa(questions, textvqa / "train_images", "val", ocr_file=broken)


def test_textvqa_file_that_is_not_json_is_named(tmp_path):
    broken = tmp_path / "TextVQA_0.5.1_val.json"
    broken.write_text('{"data": [\n{"question": ')
    with pytest.raises(AnnotationError, match=r"TextVQA_0\.5\.1_val\.json: not valid JSON .*line 2"):
        read_textvqa(broken, tmp_path, "val")


def test_textvqa_card_names_this_adapter():
    module, _, attribute = get_card("textvqa")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_textvqa
