"""Flickr30K (Karpathy's dataset_flickr30k.json): the shapes-world fixture read back through catalog.adapters.flickr30k."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from catalog.adapters import AnnotationError
from catalog.adapters.flickr30k import read_flickr30k
from catalog.cards import get_card
from pipelines.shapes_world.formats.flickr30k import flickr30k_filename, flickr30k_scene, flickr30k_split, write_flickr30k
from annotation_files import broken_copy

SEED = 6
SCENES = 10


@pytest.fixture(scope="module")
def flickr30k(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flickr30k")
    write_flickr30k(out, seed=SEED, scenes=SCENES)
    return out


def karpathy(root: Path) -> Path:
    return root / "dataset_flickr30k.json"


def read(root: Path, split: str) -> list[dict]:
    return read_flickr30k(karpathy(root), root / "flickr30k-images", split)


def image_index(record: dict) -> int:
    return next(i for i in range(SCENES) if flickr30k_filename(i) == Path(record["image"]["path"]).name)


def test_flickr30k_selects_the_split_and_gives_one_record_per_sentence(flickr30k):
    native = json.loads(karpathy(flickr30k).read_text())["images"]
    for split in ("train", "val", "test"):
        images = [image for image in native if image["split"] == split]
        sentences = [s for image in images for s in image["sentences"]]
        records = read(flickr30k, split)
        assert images and len(records) == len(sentences) == 5 * len(images)
        for record, sentence in zip(records, sentences):
            assert record["id"] == f"flickr30k:{split}:{sentence['sentid']}"
            assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("flickr30k", "captioning", split, "en")
            assert record["caption"] == sentence["raw"]
            assert flickr30k_split(image_index(record)) == split


def test_flickr30k_answers_are_the_five_sentences_of_the_image(flickr30k):
    native = {image["filename"]: image for image in json.loads(karpathy(flickr30k).read_text())["images"]}
    for record in read(flickr30k, "test"):
        image = native[Path(record["image"]["path"]).name]
        assert record["answers"] == [s["raw"] for s in image["sentences"]]
        assert record["caption"] in record["answers"]


def test_flickr30k_sizes_come_from_the_image_and_captions_name_every_shape(flickr30k):
    for split in ("train", "val", "test"):
        for record in read(flickr30k, split):
            scene, _ = flickr30k_scene(SEED, image_index(record))
            assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
            caption = record["caption"].lower()
            assert all(s.colour in caption and s.kind in caption for s in scene.shapes), (record["caption"], scene.shapes)


def test_flickr30k_unknown_split_is_refused(flickr30k):
    with pytest.raises(ValueError, match=r"split 'restval' is not in Karpathy's Flickr30K file; use one of train, val, test"):
        read(flickr30k, "restval")


def test_flickr30k_missing_raw_names_file_image_sentence_and_field(flickr30k, tmp_path):
    def drop_raw(data):
        del data["images"][3]["sentences"][1]["raw"]  # image 3 is in val

    broken = broken_copy(karpathy(flickr30k), tmp_path, drop_raw)
    with pytest.raises(AnnotationError, match=r"dataset_flickr30k\.json: images\[3\]\.sentences\[1\]: missing field 'raw'"):
        read_flickr30k(broken, flickr30k / "flickr30k-images", "val")


def test_flickr30k_sentence_of_another_image_is_named(flickr30k, tmp_path):
    def move_sentence(data):
        data["images"][4]["sentences"][2]["imgid"] = 0

    broken = broken_copy(karpathy(flickr30k), tmp_path, move_sentence)
    with pytest.raises(AnnotationError, match=r"images\[4\]\.sentences\[2\]: field 'imgid' is 0, but the image's imgid is 4"):
        read_flickr30k(broken, flickr30k / "flickr30k-images", "test")


def test_flickr30k_image_missing_from_disk_is_named(flickr30k, tmp_path):
    def point_elsewhere(data):
        data["images"][0]["filename"] = "1.jpg"

    broken = broken_copy(karpathy(flickr30k), tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=r"images\[0\]: field 'filename' names '1\.jpg', but there is no image at"):
        read_flickr30k(broken, flickr30k / "flickr30k-images", "train")


def test_flickr30k_split_of_the_wrong_type_or_value_is_named(flickr30k, tmp_path):
    def number_split(data):
        data["images"][2]["split"] = 0

    broken = broken_copy(karpathy(flickr30k), tmp_path, number_split)
    with pytest.raises(AnnotationError, match=r"images\[2\]: field 'split' is a number .*expected a string"):
        read_flickr30k(broken, flickr30k / "flickr30k-images", "train")

    def restval(data):
        data["images"][2]["split"] = "restval"

    broken = broken_copy(karpathy(flickr30k), tmp_path, restval)
    with pytest.raises(AnnotationError, match=r"images\[2\]: field 'split' is 'restval'; expected one of train, val, test"):
        read_flickr30k(broken, flickr30k / "flickr30k-images", "train")


def test_flickr30k_file_without_images_list_or_not_json_is_named(tmp_path):
    wrong = tmp_path / "dataset_flickr30k.json"
    wrong.write_text('{"images": {}, "dataset": "flickr30k"}')
    with pytest.raises(AnnotationError, match=r"dataset_flickr30k\.json: top level: field 'images' is an object"):
        read_flickr30k(wrong, tmp_path, "test")
    wrong.write_text('{"images": [\n{"filename": ')
    with pytest.raises(AnnotationError, match=r"dataset_flickr30k\.json: not valid JSON .*line 2"):
        read_flickr30k(wrong, tmp_path, "test")


def test_flickr30k_card_names_this_adapter():
    module, _, attribute = get_card("flickr30k")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_flickr30k
