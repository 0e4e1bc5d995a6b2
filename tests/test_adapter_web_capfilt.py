"""Web CapFilt (LAVIS annotation.json): the shapes-world fixture read back through catalog.adapters.web_capfilt."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from catalog.adapters import AnnotationError
from catalog.adapters.web_capfilt import read_web_capfilt
from catalog.cards import get_card
from pipelines.shapes_world.formats.web_capfilt import AUTHORS_PREFIX, web_capfilt_relative_path, web_capfilt_scene, write_web_capfilt

SEED = 9
SCENES = 9


@pytest.fixture(scope="module")
def capfilt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web_capfilt")
    write_web_capfilt(out, seed=SEED, scenes=SCENES)
    return out


def read(root: Path, **options) -> list[dict]:
    return read_web_capfilt(root / "annotation.json", root / "images", "train", **options)


def edited_copy(source: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(source.read_text())
    edit(data)
    target = tmp_path / source.name
    target.write_text(json.dumps(data))
    return target


def test_web_capfilt_maps_the_authors_paths_under_image_root(capfilt):
    native = json.loads((capfilt / "annotation.json").read_text())
    records = read(capfilt, strip_prefix=AUTHORS_PREFIX)
    assert len(records) == len(native) == SCENES
    for index, (record, row) in enumerate(zip(records, native)):
        assert record["id"] == f"web_capfilt:train:{index}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("web_capfilt", "captioning", "train", "en")
        assert record["caption"] == row["caption"]
        assert record["image"]["path"] == str((capfilt / "images" / web_capfilt_relative_path(index)).absolute())


def test_web_capfilt_keeps_the_source_folder_so_reused_file_names_stay_apart(capfilt):
    paths = [r["image"]["path"] for r in read(capfilt, strip_prefix=AUTHORS_PREFIX)]
    names = [Path(p).name for p in paths]
    assert len(set(names)) < len(names)  # cc3m/000000000.jpg and cc12m/000000000.jpg share a name
    assert len(set(paths)) == len(paths)


def test_web_capfilt_sizes_come_from_the_image_and_captions_are_true(capfilt):
    for index, record in enumerate(read(capfilt, strip_prefix=AUTHORS_PREFIX.rstrip("/"))):
        scene, _ = web_capfilt_scene(SEED, index)
        assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height)
        assert record["caption"] == record["caption"].lower() and not record["caption"].endswith(".")
        assert all(s.colour in record["caption"] and s.kind in record["caption"] for s in scene.shapes)


def test_web_capfilt_authors_paths_without_strip_prefix_ask_for_it(capfilt):
    with pytest.raises(AnnotationError, match=r"annotation\.json: \[0\]: field 'image' is the absolute path '/export/share/.*', which is not under image_root .*set strip_prefix"):
        read(capfilt)


def test_web_capfilt_relative_or_local_paths_need_no_prefix(capfilt, tmp_path):
    def relative(data):
        for row in data:
            row["image"] = row["image"].removeprefix(AUTHORS_PREFIX)

    rewritten = edited_copy(capfilt / "annotation.json", tmp_path, relative)
    records = read_web_capfilt(rewritten, capfilt / "images", "train")
    assert [r["image"]["path"] for r in records] == [r["image"]["path"] for r in read(capfilt, strip_prefix=AUTHORS_PREFIX)]

    def local(data):
        for row in data:
            row["image"] = str((capfilt / "images").absolute() / row["image"].removeprefix(AUTHORS_PREFIX))

    rewritten = edited_copy(capfilt / "annotation.json", tmp_path, local)
    assert len(read_web_capfilt(rewritten, capfilt / "images", "train")) == SCENES


def test_web_capfilt_path_outside_the_prefix_is_named(capfilt, tmp_path):
    def other_machine(data):
        data[4]["image"] = "/mnt/other/cc3m/000000001.jpg"

    broken = edited_copy(capfilt / "annotation.json", tmp_path, other_machine)
    with pytest.raises(AnnotationError, match=r"\[4\]: field 'image' is '/mnt/other/cc3m/000000001\.jpg', which does not start with strip_prefix '/export/share/datasets/vision/capfilt/'"):
        read_web_capfilt(broken, capfilt / "images", "train", strip_prefix=AUTHORS_PREFIX)


def test_web_capfilt_image_that_does_not_resolve_names_row_and_options(capfilt, tmp_path):
    def missing(data):
        data[2]["image"] = AUTHORS_PREFIX + "laion/000000002.jpg"

    broken = edited_copy(capfilt / "annotation.json", tmp_path, missing)
    with pytest.raises(AnnotationError, match=r"annotation\.json: \[2\]: field 'image' is '.*laion/000000002\.jpg' \(image_root/laion/000000002\.jpg; check image_root and strip_prefix\), but there is no image at"):
        read_web_capfilt(broken, capfilt / "images", "train", strip_prefix=AUTHORS_PREFIX)


def test_web_capfilt_path_leading_out_of_image_root_is_refused(capfilt, tmp_path):
    def escape(data):
        data[1]["image"] = AUTHORS_PREFIX + "../annotation.json"

    broken = edited_copy(capfilt / "annotation.json", tmp_path, escape)
    with pytest.raises(AnnotationError, match=r"\[1\]: field 'image' is .* which leads outside image_root"):
        read_web_capfilt(broken, capfilt / "images", "train", strip_prefix=AUTHORS_PREFIX)


def test_web_capfilt_missing_or_mistyped_caption_is_named(capfilt, tmp_path):
    def drop_caption(data):
        del data[3]["caption"]

    broken = edited_copy(capfilt / "annotation.json", tmp_path, drop_caption)
    with pytest.raises(AnnotationError, match=r"annotation\.json: \[3\]: missing field 'caption'"):
        read_web_capfilt(broken, capfilt / "images", "train", strip_prefix=AUTHORS_PREFIX)

    def list_caption(data):
        data[5]["caption"] = ["a red circle"]

    broken = edited_copy(capfilt / "annotation.json", tmp_path, list_caption)
    with pytest.raises(AnnotationError, match=r"\[5\]: field 'caption' is a list .*expected a string"):
        read_web_capfilt(broken, capfilt / "images", "train", strip_prefix=AUTHORS_PREFIX)


def test_web_capfilt_file_that_is_not_a_list_or_not_json_is_named(tmp_path):
    wrapped = tmp_path / "annotation.json"
    wrapped.write_text('{"annotations": []}')
    with pytest.raises(AnnotationError, match=r"annotation\.json: top level is an object; expected a list of image-caption pairs"):
        read_web_capfilt(wrapped, tmp_path, "train")
    wrapped.write_text('[{"image": "/export/a.jpg",\n')
    with pytest.raises(AnnotationError, match=r"annotation\.json: not valid JSON .*line 2"):
        read_web_capfilt(wrapped, tmp_path, "train")


def test_web_capfilt_card_names_this_adapter():
    module, _, attribute = get_card("web_capfilt")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_web_capfilt
