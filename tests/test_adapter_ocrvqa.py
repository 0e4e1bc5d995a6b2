"""OCR-VQA dataset.json: the shapes-world book covers read back through catalog.adapters.ocrvqa."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.ocrvqa import read_ocrvqa
from catalog.cards import get_card
from pipelines.shapes_world.draw import COLOUR_RGB
from pipelines.shapes_world.formats.ocrvqa import AUTHOR_COLOUR, TITLE_COLOUR, ocrvqa_cover, ocrvqa_key, write_ocrvqa
from annotation_files import broken_copy

SEED = 1
COVERS = 10


@pytest.fixture(scope="module")
def ocrvqa(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ocrvqa")
    write_ocrvqa(out, seed=SEED, scenes=COVERS)
    return out


def cover_index(record: dict) -> int:
    key = record["id"].rsplit(":", 1)[1].split("_")[0]
    return next(i for i in range(COVERS) if ocrvqa_key(i) == key)


def test_ocrvqa_splits_partition_the_covers_by_split_code(ocrvqa):
    native = json.loads((ocrvqa / "dataset.json").read_text())
    seen = []
    for split, code in (("train", 1), ("val", 2), ("test", 3)):
        records = read_ocrvqa(ocrvqa / "dataset.json", ocrvqa / "images", split)
        keys = [k for k, cover in native.items() if cover["split"] == code]
        assert [r["id"] for r in records] == [f"ocrvqa:{split}:{k}_{n}" for k in keys for n in range(2)]
        assert all((r["dataset"], r["task"], r["split"], r["lang"]) == ("ocrvqa", "reading_vqa", split, "en") for r in records)
        seen += keys
    assert sorted(seen) == sorted(native) and len(seen) == COVERS


def test_ocrvqa_answers_are_the_title_and_author_drawn(ocrvqa):
    records = read_ocrvqa(ocrvqa / "dataset.json", ocrvqa / "images", "train")
    assert len(records) == 2 * 6
    for record in records:
        _, book = ocrvqa_cover(SEED, cover_index(record))
        expected = {"Who wrote this book?": book["authorName"], "What is the title of this book?": book["title"]}
        assert record["answer"] == expected[record["question"]] and record["answers"] == [record["answer"]]


def test_ocrvqa_title_names_a_look_on_the_cover(ocrvqa):
    for index in range(COVERS):
        scene, book = ocrvqa_cover(SEED, index)
        colour, kind = book["title"].lower().split()
        assert any(s.colour == colour and kind in (s.kind, s.kind + "s") for s in scene.shapes)


def test_ocrvqa_cover_has_the_title_above_and_the_author_below(ocrvqa):
    for record in read_ocrvqa(ocrvqa / "dataset.json", ocrvqa / "images", "val"):
        scene, _ = ocrvqa_cover(SEED, cover_index(record))
        with Image.open(record["image"]["path"]) as opened:
            image = opened.convert("RGB")
        assert image.size == (record["image"]["width"], record["image"]["height"])
        band = (image.height - scene.height) // 2

        def ink(top: int, colour: str) -> int:
            target = COLOUR_RGB[colour]
            return sum(
                sum((a - b) ** 2 for a, b in zip(image.getpixel((x, y)), target)) < 80**2
                for x in range(image.width) for y in range(top, top + band)
            )

        assert ink(0, TITLE_COLOUR) > 20 and ink(0, AUTHOR_COLOUR) < ink(0, TITLE_COLOUR)
        assert ink(image.height - band, AUTHOR_COLOUR) > 20


def test_ocrvqa_missing_answers_field_names_file_key_and_field(ocrvqa, tmp_path):
    key = ocrvqa_key(0)

    def drop_answers(data):
        del data[key]["answers"]

    broken = broken_copy(ocrvqa / "dataset.json", tmp_path, drop_answers)
    with pytest.raises(AnnotationError, match=rf'dataset\.json: \["{key}"\]: missing field \'answers\''):
        read_ocrvqa(broken, ocrvqa / "images", "train")


def test_ocrvqa_questions_without_answers_are_named(ocrvqa, tmp_path):
    key = ocrvqa_key(1)

    def drop_one(data):
        data[key]["answers"].pop()

    broken = broken_copy(ocrvqa / "dataset.json", tmp_path, drop_one)
    with pytest.raises(AnnotationError, match=rf'\["{key}"\]: 2 questions but 1 answers'):
        read_ocrvqa(broken, ocrvqa / "images", "train")


def test_ocrvqa_split_code_of_the_wrong_type_or_value_is_named(ocrvqa, tmp_path):
    key = ocrvqa_key(2)
    broken = broken_copy(ocrvqa / "dataset.json", tmp_path, lambda data: data[key].update(split="train"))
    with pytest.raises(AnnotationError, match=rf'\["{key}"\]: field \'split\' is a string .*expected an integer'):
        read_ocrvqa(broken, ocrvqa / "images", "train")
    broken = broken_copy(ocrvqa / "dataset.json", tmp_path, lambda data: data[key].update(split=4))
    with pytest.raises(AnnotationError, match=rf'\["{key}"\]: field \'split\' is 4; expected 1 \(train\)'):
        read_ocrvqa(broken, ocrvqa / "images", "train")


def test_ocrvqa_cover_without_an_image_is_named_or_skipped(ocrvqa, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in (ocrvqa / "images").glob("*.jpg"):
        if path.stem != ocrvqa_key(0):
            (images / path.name).write_bytes(path.read_bytes())
    with pytest.raises(AnnotationError, match=rf'dataset\.json: \["{ocrvqa_key(0)}"\]: cover image is not at'):
        read_ocrvqa(ocrvqa / "dataset.json", images, "train")
    records = read_ocrvqa(ocrvqa / "dataset.json", images, "train", skip_missing_images=True)
    assert len(records) == 2 * 5 and not any(ocrvqa_key(0) in r["id"] for r in records)


def test_ocrvqa_image_takes_the_extension_of_its_url(ocrvqa, tmp_path):
    key = ocrvqa_key(0)
    broken = broken_copy(ocrvqa / "dataset.json", tmp_path, lambda data: data[key].update(imageURL=f"http://x.example/{key}.png"))
    with pytest.raises(AnnotationError, match=rf"cover image is not at .*{key}\.png"):
        read_ocrvqa(broken, ocrvqa / "images", "train")


def test_ocrvqa_unknown_split_name_is_refused(ocrvqa):
    with pytest.raises(ValueError, match=r"split 'validation'; expected one of"):
        read_ocrvqa(ocrvqa / "dataset.json", ocrvqa / "images", "validation")


def test_ocrvqa_card_names_this_adapter():
    module, _, attribute = get_card("ocrvqa")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_ocrvqa
