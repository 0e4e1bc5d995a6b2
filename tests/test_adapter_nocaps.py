"""nocaps: the shapes-world fixture read back through catalog.adapters.nocaps."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.nocaps import read_nocaps
from catalog.cards import get_card
from pipelines.shapes_world.draw import nearest_colour_name
from pipelines.shapes_world.formats.nocaps import FILES, nocaps_domain, nocaps_open_images_id, nocaps_scene, write_nocaps
from annotation_files import broken_copy

SEED = 5
SCENES = 9


@pytest.fixture(scope="module")
def nocaps(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nocaps")
    write_nocaps(out, seed=SEED, scenes=SCENES)
    return out


def read(root: Path, split: str) -> list[dict]:
    return read_nocaps(root / FILES[split], root / split, split)


def image_index(record: dict, split: str) -> int:
    stem = Path(record["image"]["path"]).stem
    return next(i for i in range(SCENES) if nocaps_open_images_id(SEED, split, i) == stem)


def test_nocaps_val_gives_one_record_per_caption_with_all_references(nocaps):
    native = json.loads((nocaps / FILES["val"]).read_text())
    records = read(nocaps, "val")
    assert len(records) == len(native["annotations"]) > SCENES
    by_image: dict[int, list[str]] = {}
    for annotation in native["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    for record, annotation in zip(records, native["annotations"]):
        assert record["id"] == f"nocaps:val:{annotation['id']}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("nocaps", "captioning", "val", "en")
        assert record["caption"] == annotation["caption"]
        assert record["answers"] == by_image[annotation["image_id"]] and record["caption"] in record["answers"]
        assert len(record["answers"]) >= 5


def test_nocaps_records_carry_the_domain_and_size_of_their_image(nocaps):
    seen_domains = set()
    for record in read(nocaps, "val"):
        index = image_index(record, "val")
        scene, _ = nocaps_scene(SEED, "val", index)
        assert record["domain"] == nocaps_domain(index)
        seen_domains.add(record["domain"])
        assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
        assert Path(record["image"]["path"]).is_absolute() and Path(record["image"]["path"]).parent.name == "val"
    assert seen_domains == {"in-domain", "near-domain", "out-domain"}


def test_nocaps_captions_name_every_shape_drawn(nocaps):
    for record in read(nocaps, "val"):
        scene, _ = nocaps_scene(SEED, "val", image_index(record, "val"))
        caption = record["caption"].lower()
        for shape in scene.shapes:
            assert shape.colour in caption and shape.kind in caption, (record["caption"], shape)
        with Image.open(record["image"]["path"]) as image:
            pixel = image.convert("RGB").getpixel(tuple(int(v) for v in scene.shapes[0].centre))
        assert nearest_colour_name(pixel) == scene.shapes[0].colour


def test_nocaps_test_split_has_one_record_per_image_and_no_captions(nocaps):
    records = read(nocaps, "test")
    assert [r["id"] for r in records] == [f"nocaps:test:{i}" for i in range(SCENES)]
    assert all(r["caption"] is None and r["answers"] is None for r in records)
    assert [r["domain"] for r in records] == [nocaps_domain(i) for i in range(SCENES)]
    assert all(Path(r["image"]["path"]).is_file() for r in records)


def test_nocaps_missing_caption_names_file_row_and_field(nocaps, tmp_path):
    def drop_caption(data):
        del data["annotations"][3]["caption"]

    broken = broken_copy(nocaps / FILES["val"], tmp_path, drop_caption)
    with pytest.raises(AnnotationError, match=r"nocaps_val_4500_captions\.json: annotations\[3\]: missing field 'caption'"):
        read_nocaps(broken, nocaps / "val", "val")


def test_nocaps_caption_for_an_unknown_image_is_named(nocaps, tmp_path):
    def unknown_image(data):
        data["annotations"][4]["image_id"] = 9999

    broken = broken_copy(nocaps / FILES["val"], tmp_path, unknown_image)
    with pytest.raises(AnnotationError, match=r"annotations\[4\]: image_id 9999 is not in 'images'"):
        read_nocaps(broken, nocaps / "val", "val")


def test_nocaps_image_id_of_the_wrong_type_is_named(nocaps, tmp_path):
    def string_id(data):
        data["images"][2]["id"] = "2"

    broken = broken_copy(nocaps / FILES["val"], tmp_path, string_id)
    with pytest.raises(AnnotationError, match=r"images\[2\]: field 'id' is a string .*expected an integer"):
        read_nocaps(broken, nocaps / "val", "val")


def test_nocaps_image_missing_from_disk_is_named(nocaps, tmp_path):
    def point_elsewhere(data):
        data["images"][1]["file_name"] = "ffffffffffffffff.jpg"

    broken = broken_copy(nocaps / FILES["test"], tmp_path, point_elsewhere)
    with pytest.raises(AnnotationError, match=r"nocaps_test_image_info\.json: images\[1\]: field 'file_name' names 'ffffffffffffffff\.jpg', but there is no image"):
        read_nocaps(broken, nocaps / "test", "test")


def test_nocaps_unknown_domain_spelling_is_named(nocaps, tmp_path):
    def misspell(data):
        data["images"][0]["domain"] = "out-of-domain"

    broken = broken_copy(nocaps / FILES["val"], tmp_path, misspell)
    with pytest.raises(AnnotationError, match=r"images\[0\]: field 'domain' is 'out-of-domain'; expected one of in-domain, near-domain, out-domain"):
        read_nocaps(broken, nocaps / "val", "val")


def test_nocaps_file_that_is_not_json_is_named(tmp_path):
    broken = tmp_path / "nocaps_val_4500_captions.json"
    broken.write_text('{"images": [\n{"id": ')
    with pytest.raises(AnnotationError, match=r"nocaps_val_4500_captions\.json: not valid JSON .*line 2"):
        read_nocaps(broken, tmp_path, "val")


def test_nocaps_card_names_this_adapter():
    module, _, attribute = get_card("nocaps")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_nocaps
