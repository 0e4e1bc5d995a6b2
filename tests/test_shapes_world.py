"""The shapes world: deterministic scenes whose captions, answers and boxes are true, served over loopback."""

from __future__ import annotations

import collections
import io
import json
import random
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.shapes_world import PortInUseError, ShapesServer, serve_demo_world, write_demo_data
from pipelines.shapes_world.draw import draw_scene, nearest_colour_name
from pipelines.shapes_world.export import BAD_ROW_KINDS, BAD_ROWS_PER_KIND
from pipelines.shapes_world.scenes import (
    COLOUR_ZH,
    COLOURS,
    KIND_PLURAL,
    KIND_ZH,
    NUMBER_EN,
    NUMBER_ZH,
    SHAPE_KINDS,
    Scene,
    Shape,
    captions,
    make_scene,
    normalised_boxes,
    questions,
)

SMALL = {"pair_scenes": 40, "train_scenes": 24, "val_scenes": 8}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "world"
    write_demo_data(out, seed=3, port=free_port(), **SMALL)
    return out


@pytest.fixture(scope="module")
def world(world_dir) -> dict:
    return json.loads((world_dir / "world.json").read_text())


def sample_scenes(count: int, seed: str = "test"):
    for i in range(count):
        rng = random.Random(f"{seed}/{i}")
        yield make_scene(rng), rng


# ---------------------------------------------------------------- re-deriving answers from the scene


def resolve(scene: Scene, name: str):
    """The one shape a question's referring name ("the star", "the red shape", "the red star") picks out."""
    words = name.removeprefix("the ").split()
    if words[-1] == "shape":
        matches = [s for s in scene.shapes if s.colour == words[0]]
    elif len(words) == 1:
        matches = [s for s in scene.shapes if s.kind == words[0]]
    else:
        matches = [s for s in scene.shapes if (s.colour, s.kind) == (words[0], words[1])]
    assert len(matches) == 1, f"{name!r} is ambiguous in {scene}"
    return matches[0]


def expected_answer(scene: Scene, question: str) -> str:
    """The answer, worked out from the scene independently of scenes.questions."""
    singular = {plural: kind for kind, plural in KIND_PLURAL.items()}
    shapes = scene.shapes
    if question in ("How many shapes are there?", "How many objects are in the image?"):
        return str(len(shapes))
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        return str(sum(s.colour == m[1] for s in shapes))
    if m := re.fullmatch(r"How many (\w+) (\w+) are there\?", question):
        return str(sum((s.colour, s.kind) == (m[1], singular[m[2]]) for s in shapes))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        return str(sum(s.kind == singular[m[1]] for s in shapes))
    if m := re.fullmatch(r"(?:What color is the|What is the color of the|Which color is the) (\w+)\?", question):
        return resolve(scene, m[1]).colour
    if m := re.fullmatch(r"What color are the (\w+)\?", question):
        (colour,) = {s.colour for s in shapes if s.kind == singular[m[1]]}
        return colour
    if m := re.fullmatch(r"(?:What shape is the|What is the shape of the) (\w+) object\?|Which shape is (\w+)\?", question):
        return resolve(scene, f"the {m[1] or m[2]} shape").kind
    if m := re.fullmatch(r"What shape are the (\w+) objects\?", question):
        (kind,) = {s.kind for s in shapes if s.colour == m[1]}
        return kind
    if m := re.fullmatch(r"(?:Is there|Do you see) an? (\w+) (\w+)(?: in the image)?\?", question):
        return "yes" if any((s.colour, s.kind) == (m[1], m[2]) for s in shapes) else "no"
    if m := re.fullmatch(r"(?:Is|Which side of the image is) (the [\w ]+?) (?:on the left or the right side of the image|on)\?", question):
        x = resolve(scene, m[1]).centre[0]
        assert not 0.4 * scene.width <= x <= 0.6 * scene.width, "asked about a shape in the middle"
        return "left" if x < scene.width / 2 else "right"
    if m := re.fullmatch(r"Is (the [\w ]+?) at the top or the bottom of the image\?", question):
        y = resolve(scene, m[1]).centre[1]
        assert not 0.4 * scene.height <= y <= 0.6 * scene.height
        return "top" if y < scene.height / 2 else "bottom"
    if m := re.fullmatch(r"Is (the [\w ]+?) (to the left of|on the left or the right of|above or below|above) (the [\w ]+?)\?", question):
        a, b = resolve(scene, m[1]), resolve(scene, m[3])
        a_left, b_left = a.x1 <= b.x0, b.x1 <= a.x0
        a_above, b_above = a.y1 <= b.y0, b.y1 <= a.y0
        if m[2] == "to the left of":
            assert a_left or b_left
            return "yes" if a_left else "no"
        if m[2] == "on the left or the right of":
            assert a_left or b_left
            return "left" if a_left else "right"
        assert a_above or b_above
        if m[2] == "above":
            return "yes" if a_above else "no"
        return "above" if a_above else "below"
    raise AssertionError(f"test does not know how to answer {question!r}")


# ---------------------------------------------------------------- scenes


def test_scenes_hold_one_to_four_non_overlapping_shapes_inside_the_image():
    for scene, _ in sample_scenes(300):
        assert 1 <= len(scene.shapes) <= 4
        assert 96 <= scene.width <= 256 and 96 <= scene.height <= 256
        for i, a in enumerate(scene.shapes):
            assert 0 <= a.x0 < a.x1 <= scene.width and 0 <= a.y0 < a.y1 <= scene.height
            for b in scene.shapes[i + 1 :]:
                overlap_x = a.x0 < b.x1 and b.x0 < a.x1
                overlap_y = a.y0 < b.y1 and b.y0 < a.y1
                assert not (overlap_x and overlap_y), f"{a} overlaps {b}"


def test_image_sizes_vary_and_include_non_square_ones():
    sizes = {(s.width, s.height) for s, _ in sample_scenes(100)}
    assert len(sizes) > 50
    assert any(w != h for w, h in sizes) and any(w == h for w, h in sizes)


def test_every_answer_is_true_of_its_scene():
    asked = collections.Counter()
    for scene, rng in sample_scenes(400):
        for qa in questions(scene, rng):
            assert qa["answer"] == expected_answer(scene, qa["question"]), (qa, scene)
            asked[qa["question_type"]] += 1
    assert set(asked) == {"colour", "shape", "count", "exists", "position"}


def test_answers_are_short_lowercase_vqa_style_with_digits_for_counts():
    for scene, rng in sample_scenes(200):
        for qa in questions(scene, rng):
            assert qa["answer"] == qa["answer"].lower().strip()
            assert qa["answer_type"] in ("yes/no", "number", "other")
            if qa["answer_type"] == "number":
                assert qa["answer"].isdigit()
            if qa["answer_type"] == "yes/no":
                assert qa["answer"] in ("yes", "no")


def test_answer_distribution_is_balanced():
    answers = collections.Counter()
    for scene, rng in sample_scenes(1000, seed="balance"):
        answers.update(qa["answer"] for qa in questions(scene, rng))
    total = sum(answers.values())
    (top, top_count), = answers.most_common(1)
    assert top_count / total <= 0.25, f"{top!r} is {top_count / total:.0%} of answers"
    assert 0.8 <= answers["yes"] / answers["no"] <= 1.25


def test_english_captions_count_every_look():
    for scene, rng in sample_scenes(200):
        looks = collections.Counter((s.colour, s.kind) for s in scene.shapes)
        written = captions(scene, "en", rng)
        assert len(written) == 5 and len(set(written)) == 5
        for caption in written:
            for (colour, kind), count in looks.items():
                # Left-to-right captions list shapes one by one; the rest count them.
                if caption.startswith("From left to right") or "to the left of" in caption:
                    assert caption.lower().count(f"{colour} {kind}") == count
                elif count == 1:
                    assert re.search(rf"\b(?:an?|single) {colour} {kind}\b", caption, re.I), caption
                else:
                    assert f"{NUMBER_EN[count]} {colour} {KIND_PLURAL[kind]}" in caption.lower(), caption


def test_chinese_captions_count_every_look():
    for scene, rng in sample_scenes(200):
        looks = collections.Counter((s.colour, s.kind) for s in scene.shapes)
        for caption in captions(scene, "zh", rng):
            assert caption.endswith("。")
            for (colour, kind), count in looks.items():
                if caption.startswith("从左到右"):
                    assert caption.count(f"一个{COLOUR_ZH[colour]}{KIND_ZH[kind]}") == count
                else:
                    assert f"{NUMBER_ZH[count]}个{COLOUR_ZH[colour]}{KIND_ZH[kind]}" in caption, caption


def test_a_counted_caption_reads_naturally():
    rng = random.Random(0)
    shapes = [Shape("circle", "red", 10, 10, 40, 40), Shape("circle", "red", 60, 10, 90, 40), Shape("square", "blue", 120, 60, 160, 100)]
    scene = Scene(200, 120, "white", shapes)
    english = captions(scene, "en", rng, count=20)
    chinese = captions(scene, "zh", rng, count=20)
    assert any(c in english for c in ("Two red circles and a blue square on a white background.", "A blue square and two red circles on a white background."))
    assert any(c in chinese for c in ("白色背景上有两个红色圆形和一个蓝色正方形。", "白色背景上有一个蓝色正方形和两个红色圆形。"))


def test_drawn_centre_of_every_shape_has_its_named_colour():
    for scene, _ in sample_scenes(100):
        image = draw_scene(scene)
        assert image.size == (scene.width, scene.height)
        for shape in scene.shapes:
            x, y = shape.centre
            assert nearest_colour_name(image.getpixel((int(x), int(y)))) == shape.colour


def test_normalised_boxes_are_integers_in_0_to_999():
    for scene, _ in sample_scenes(100):
        for box, shape in zip(normalised_boxes(scene), scene.shapes):
            assert all(isinstance(v, int) and 0 <= v < 1000 for v in box)
            assert box[0] < box[2] and box[1] < box[3]
            assert abs(box[0] - 1000 * shape.x0 / scene.width) < 1


# ---------------------------------------------------------------- written world


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_files(tmp_path):
    port = free_port()
    write_demo_data(tmp_path / "a", seed=11, port=port, pair_scenes=12, train_scenes=6, val_scenes=3)
    write_demo_data(tmp_path / "b", seed=11, port=port, pair_scenes=12, train_scenes=6, val_scenes=3)
    write_demo_data(tmp_path / "c", seed=12, port=port, pair_scenes=12, train_scenes=6, val_scenes=3)
    a, b, c = all_files(tmp_path / "a"), all_files(tmp_path / "b"), all_files(tmp_path / "c")
    assert a == b
    assert not any(name.startswith(".") or ".tmp-" in name for name in a), "temporary files left behind"
    assert a["urls.parquet"] != c["urls.parquet"]
    assert a["coco/train2014/COCO_train2014_000000000001.jpg"] != c["coco/train2014/COCO_train2014_000000000001.jpg"]


def test_world_json_records_seed_port_and_row_counts(world, world_dir):
    assert world["seed"] == 3
    assert world["base_url"] == f"http://127.0.0.1:{world['port']}"
    kinds = world["urls"]["row_kinds"]
    assert kinds["good"] == SMALL["pair_scenes"]
    assert all(kinds[kind] == BAD_ROWS_PER_KIND for kind in BAD_ROW_KINDS)
    assert world["urls"]["rows"] == pq.read_metadata(world_dir / "urls.parquet").num_rows
    assert world["coco"]["train2014"]["captions"] == 5 * SMALL["train_scenes"]


def test_url_list_is_url_and_caption_strings_on_the_recorded_port(world, world_dir):
    table = pq.read_table(world_dir / "urls.parquet")
    assert table.schema.names == ["url", "caption"]
    assert table.schema.field("url").type == pa.string() and table.schema.field("caption").type == pa.string()
    assert all(url.startswith(world["base_url"] + "/images/") for url in table["url"].to_pylist())


def test_good_captions_are_about_65_percent_english_35_percent_chinese(world_dir, world):
    bad = {url for urls in world["urls"]["bad_rows"].values() for url in urls}
    rows = pq.read_table(world_dir / "urls.parquet").to_pylist()
    good = [r["caption"] for r in rows if r["url"] not in bad]
    chinese = sum(bool(re.search(r"[\u4e00-\u9fff]", c)) for c in good)
    assert chinese == world["urls"]["good_caption_languages"]["zh"] == round(0.35 * len(good))


def test_bad_rows_are_what_they_claim(world_dir, world):
    bad = world["urls"]["bad_rows"]
    rows = {r["url"]: r["caption"] for r in pq.read_table(world_dir / "urls.parquet").to_pylist()}
    web = world_dir / "web"

    def local(url: str) -> Path:
        return web / url.removeprefix(world["base_url"] + "/")

    assert all(not local(u).exists() for u in bad["dead_url"])
    assert all(local(u).read_bytes().startswith(b"<!DOCTYPE html>") for u in bad["not_image"])
    assert all(Image.open(local(u)).size == (8, 8) for u in bad["tiny_image"])
    assert all(rows[u] == "" for u in bad["empty_caption"])
    assert all(rows[u] is None for u in bad["null_caption"])
    sizes = [Image.open(local(u)).size for u in bad["extreme_aspect"]]
    assert (480, 40) in sizes and all(max(w, h) / min(w, h) >= 10 and min(w, h) >= 40 for w, h in sizes)
    good_bytes = {p.read_bytes() for p in (web / "images").glob("shape_*.jpg")}
    for url in bad["duplicate_image"]:
        assert local(url).read_bytes() in good_bytes
        assert rows[url]


def mean_difference(original: Image.Image, copy: Image.Image) -> float:
    """Mean absolute grey-level difference once the original is scaled to the copy's size."""
    scaled = original.resize(copy.size, Image.Resampling.LANCZOS)
    return float(np.abs(np.asarray(scaled, np.int16) - np.asarray(copy, np.int16)).mean())


def test_near_duplicates_are_good_images_scaled_and_re_encoded_under_another_caption(world_dir, world):
    rows = {r["url"]: r["caption"] for r in pq.read_table(world_dir / "urls.parquet").to_pylist()}
    base = world["base_url"] + "/"
    good = {url: Image.open(world_dir / "web" / url.removeprefix(base)).convert("L")
            for url in rows if "/shape_" in url}
    near = world["urls"]["bad_rows"]["near_duplicate_image"]
    assert len(near) == BAD_ROWS_PER_KIND
    for url in near:
        data = (world_dir / "web" / url.removeprefix(base)).read_bytes()
        copy = Image.open(io.BytesIO(data)).convert("L")
        same_size = [u for u, im in good.items() if (round(im.width * 0.9), round(im.height * 0.9)) == copy.size]
        original = min(same_size, key=lambda u: mean_difference(good[u], copy))
        assert mean_difference(good[original], copy) < 3  # the same drawing, up to resampling and JPEG noise
        assert data != (world_dir / "web" / original.removeprefix(base)).read_bytes()
        assert rows[url] and rows[url] != rows[original]


def test_foreign_captions_are_german_or_french_to_language_id():
    from pipelines.ingest.filters import FilterConfig, LanguageId
    from pipelines.shapes_world.export import _foreign_caption

    lang_id = LanguageId(FilterConfig())
    for k, (scene, _) in enumerate(sample_scenes(4)):
        assert lang_id.classify(_foreign_caption(scene, k))[:2] == (None, "de" if k % 2 == 0 else "fr")


def test_server_serves_images_and_404s_the_dead_url(world_dir, world):
    good_url = next(u for u in pq.read_table(world_dir / "urls.parquet")["url"].to_pylist() if "/shape_" in u)
    with serve_demo_world(world_dir) as server:
        assert server.url == world["base_url"]
        with urllib.request.urlopen(good_url, timeout=5) as response:
            body = response.read()
            assert response.headers["Content-Type"] == "image/jpeg"
        assert body == (world_dir / "web" / good_url.removeprefix(server.url + "/")).read_bytes()
        assert Image.open(io.BytesIO(body)).format == "JPEG"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(world["urls"]["bad_rows"]["dead_url"][0], timeout=5)
        assert missing.value.code == 404


def test_a_taken_port_names_the_port_and_how_to_regenerate(world_dir, world):
    with ShapesServer(world_dir / "web", world["port"]):
        with pytest.raises(PortInUseError) as taken:
            serve_demo_world(world_dir)
    message = str(taken.value)
    assert str(world["port"]) in message and "loom demo-data" in message and "--port N" in message


def test_server_on_port_zero_reports_the_port_it_took(world_dir):
    with ShapesServer(world_dir / "web", 0) as server:
        assert server.port != 0
        with urllib.request.urlopen(f"{server.url}/images/", timeout=5) as response:
            assert response.status == 200


def test_coco_files_have_the_official_fields(world_dir):
    annotations = world_dir / "coco" / "annotations"
    captions_file = json.loads((annotations / "captions_train2014.json").read_text())
    assert set(captions_file) == {"info", "licenses", "images", "annotations"}
    assert set(captions_file["images"][0]) == {"id", "file_name", "width", "height", "license", "coco_url", "flickr_url", "date_captured"}
    assert set(captions_file["annotations"][0]) == {"id", "image_id", "caption"}
    per_image = collections.Counter(a["image_id"] for a in captions_file["annotations"])
    assert set(per_image.values()) == {5}

    instances = json.loads((annotations / "instances_val2014.json").read_text())
    assert {"images", "annotations", "categories"} <= set(instances)
    assert {"id", "name", "supercategory"} == set(instances["categories"][0])
    sizes = {i["id"]: (i["width"], i["height"]) for i in instances["images"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    for row in instances["annotations"]:
        assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"} <= set(row)
        x, y, w, h = row["bbox"]
        assert all(isinstance(v, float) for v in row["bbox"])
        assert x + w <= sizes[row["image_id"]][0] and y + h <= sizes[row["image_id"]][1]
        assert 0 < row["area"] <= w * h
        colour, kind = names[row["category_id"]].split()
        assert colour in COLOURS and kind in SHAPE_KINDS


def test_instance_boxes_centre_on_their_named_colour_in_the_jpeg(world_dir):
    instances = json.loads((world_dir / "coco" / "annotations" / "instances_train2014.json").read_text())
    files = {i["id"]: i["file_name"] for i in instances["images"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    for row in instances["annotations"]:
        image = Image.open(world_dir / "coco" / "train2014" / files[row["image_id"]]).convert("RGB")
        x, y, w, h = row["bbox"]
        centre = image.getpixel((int(x + w / 2), int(y + h / 2)))
        assert nearest_colour_name(centre) == names[row["category_id"]].split()[0]


def test_vqav2_files_have_the_official_fields_and_ids(world_dir):
    vqav2 = world_dir / "vqav2"
    qs = json.loads((vqav2 / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    ans = json.loads((vqav2 / "v2_mscoco_val2014_annotations.json").read_text())
    assert {"info", "task_type", "data_type", "license", "data_subtype", "questions"} <= set(qs)
    assert (qs["task_type"], qs["data_type"], qs["data_subtype"]) == ("Open-Ended", "mscoco", "val2014")
    assert {"info", "license", "data_subtype", "annotations"} <= set(ans)
    per_image = collections.Counter(q["image_id"] for q in qs["questions"])
    assert min(per_image.values()) >= 3
    for q in qs["questions"]:
        assert q["question_id"] // 1000 == q["image_id"]
    for a in ans["annotations"]:
        assert set(a) == {"question_type", "multiple_choice_answer", "answers", "image_id", "answer_type", "question_id"}
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert all(x["answer"] == a["multiple_choice_answer"] and x["answer_confidence"] == "yes" for x in a["answers"])


def test_train_and_val_scenes_are_disjoint(world_dir):
    train = {p.read_bytes() for p in (world_dir / "coco" / "train2014").glob("*.jpg")}
    val = {p.read_bytes() for p in (world_dir / "coco" / "val2014").glob("*.jpg")}
    assert len(train) == SMALL["train_scenes"] and len(val) == SMALL["val_scenes"]
    assert not train & val
