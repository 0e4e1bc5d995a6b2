"""Your own dataset through the generic reader: jsonl, json, parquet, csv and a Hugging Face `datasets`
folder, mapped by columns, rendered through the templates; a missing column is named."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.generic import read_generic
from pipelines.render import render_table


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (40 + k, 30), colour).save(folder / f"{colour}.jpg")
    return folder


ROWS = [{"img": "red.jpg", "q": "What colour is the picture?", "a": "red", "language": "en"},
        {"img": "blue.jpg", "q": "图片是什么颜色？", "a": "蓝色", "language": "zh"},
        {"img": "green.jpg", "q": "What colour is the picture?", "a": "green", "language": "en"}]
VQA_COLUMNS = {"image": "img", "question": "q", "answer": "a", "lang": "language"}


def write(tmp_path, kind: str):
    path = tmp_path / f"mine.{kind}"
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n", encoding="utf-8")
    elif kind == "json":
        path.write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        path.write_text("img,q,a,language\n" + "".join(f"{r['img']},{r['q']},{r['a']},{r['language']}\n"
                                                       for r in ROWS), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv"])
def test_a_vqa_table_in_every_format_reads_into_records_with_their_language(tmp_path, images, kind):
    records = read_generic(str(write(tmp_path, kind)), task="vqa", columns=VQA_COLUMNS, name="mine",
                           image_root=str(images))
    assert [r["id"] for r in records] == ["mine:train:0", "mine:train:1", "mine:train:2"]
    assert [r["lang"] for r in records] == ["en", "zh", "en"]
    assert records[1]["question"] == "图片是什么颜色？" and records[1]["answers"] == ["蓝色"]
    assert records[0]["image"] == {"path": str(images / "red.jpg"), "width": 40, "height": 30}
    table = render_table(records, seed=0)
    assert table["template_id"].to_pylist()[1].startswith("vqa_zh_")  # a Chinese row draws a Chinese template
    assert all(m[-1]["content"] in ("red", "蓝色", "green") for m in table["messages"].to_pylist())


def test_a_hugging_face_datasets_folder_of_conversations_passes_through(tmp_path, images):
    import datasets

    rows = [{"image": "red.jpg", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                   {"from": "gpt", "value": "A red square."}]}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    records = read_generic(str(tmp_path / "hf"), task="conversation", columns={"messages": "conversations"},
                           image_root=str(images), lang="en", name="chats")
    assert records[0]["task"] == "llava_instruct"
    assert records[0]["messages"] == [{"role": "user", "content": "<image>\nDescribe it."},
                                      {"role": "assistant", "content": "A red square."}]
    assert render_table(records, seed=0)["template_id"].to_pylist() == ["native"]


def test_a_captioning_parquet_with_one_language_for_the_file(tmp_path, images):
    pq.write_table(pa.table({"file": ["blue.jpg"], "text": ["A blue picture."]}), tmp_path / "caps.parquet")
    [record] = read_generic(str(tmp_path / "caps.parquet"), task="captioning", lang="en",
                            columns={"image": "file", "caption": "text"}, image_root=str(images))
    assert record["caption"] == "A blue picture." and record["dataset"] == "caps"


def test_a_classification_table_gives_the_text_shown_with_the_image_and_its_label(tmp_path, images):
    pq.write_table(pa.table({"img": ["red.jpg"], "overlay": ["everyone loves red"], "hateful": ["no"]}),
                   tmp_path / "memes.parquet")
    [record] = read_generic(str(tmp_path / "memes.parquet"), task="classification", lang="en", image_root=str(images),
                            columns={"image": "img", "text": "overlay", "answer": "hateful"})
    assert (record["text"], record["answer"]) == ("everyone loves red", "no")
    [messages] = render_table([record], seed=0)["messages"].to_pylist()
    assert "everyone loves red" in messages[0]["content"] and messages[1]["content"] == "no"


def test_a_missing_column_is_named_with_the_columns_the_table_has(tmp_path, images):
    with pytest.raises(AnnotationError, match=r"no column for question \(column 'question'\).*"
                                              r"the table has \['a', 'img', 'language', 'q'\]"):
        read_generic(str(write(tmp_path, "jsonl")), task="vqa", columns={"image": "img", "lang": "language"},
                     image_root=str(images))
    with pytest.raises(AnnotationError, match="or give `lang:` for the whole file"):
        read_generic(str(write(tmp_path, "jsonl")), task="vqa", columns={"image": "img", "question": "q", "answer": "a"},
                     image_root=str(images))


def test_a_row_naming_a_missing_image_names_the_file_and_the_row(tmp_path, images):
    (images / "green.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"mine.jsonl: row 2: column 'img' names 'green.jpg'"):
        read_generic(str(write(tmp_path, "jsonl")), task="vqa", columns=VQA_COLUMNS, image_root=str(images))


def test_loom_render_renders_a_users_jsonl_and_datasets_folder(tmp_path, images, capsys):
    import datasets

    from jobs.cli import main

    jsonl = write(tmp_path, "jsonl")
    datasets.Dataset.from_list([{"file": "red.jpg", "text": "A red picture."}]).save_to_disk(str(tmp_path / "hf"))
    config = tmp_path / "render.yaml"
    config.write_text(
        "render:\n  ray: never\n  datasets:\n"
        f"    - {{adapter: generic, path: '{jsonl}', task: vqa, name: mine, image_root: '{images}',\n"
        "       columns: {image: img, question: q, answer: a, lang: language}}\n"
        f"    - {{adapter: generic, path: '{tmp_path / 'hf'}', task: captioning, lang: en, image_root: '{images}',\n"
        "       columns: {image: file, caption: text}}\n")
    assert main(["render", str(config), "--out", str(tmp_path / "run")]) == 0
    manifest = json.loads((tmp_path / "run" / "render" / "manifest.json").read_text())
    assert manifest["rows_out"] == 4
    langs = [d["languages"] for d in manifest["datasets"].values()]
    assert {"en": 2, "zh": 1} in langs and {"en": 1} in langs
    assert "loom: " not in capsys.readouterr().err


def test_only_an_image_folder_is_an_image_root_not_a_table_a_repository_or_a_folder_named_like_the_dataset(
        tmp_path, images, monkeypatch):
    from jobs.render import image_roots

    monkeypatch.chdir(tmp_path)
    for folder in ("hf", "repo", "mine"):  # `mine` is also the first entry's dataset name
        (tmp_path / folder).mkdir()
    entries = [{"adapter": "generic", "path": str(tmp_path / "hf"), "task": "captioning", "name": "mine",
                "image_root": str(images)},
               {"adapter": "generic", "hub": str(tmp_path / "repo"), "task": "vqa", "name": "mine"}]
    assert image_roots({"datasets": entries}) == {"mine": str(images)}


def jpeg(colour: str, size=(40, 30)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture()
def offline_datasets(tmp_path, monkeypatch):
    """The datasets library offline, its cache in the test's folder."""
    import datasets

    import huggingface_hub

    for module, name in ((datasets.config, "HF_DATASETS_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
                         (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, name, True)  # as HF_DATASETS_OFFLINE=1 sets them at import
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return datasets


def dataset_repository(folder, datasets):
    """A dataset repository as the Hub holds one, here on disk: data/train-*.parquet whose `image` column is a
    datasets Image feature with the pictures embedded as bytes."""
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    rows = {"image": [{"bytes": jpeg(c), "path": f"{c}.jpg"} for c in ("red", "blue", "red")],
            "question": ["What colour is it?"] * 3, "answer": ["red", "blue", "red"]}
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def test_loom_render_reads_a_dataset_by_name_and_writes_its_embedded_images_beside_the_instructions(
        tmp_path, offline_datasets):
    from vlm.images import TarShards, load_image

    repository = dataset_repository(tmp_path / "colours", offline_datasets)
    config = tmp_path / "render.yaml"
    config.write_text("render:\n  ray: never\n  datasets:\n"
                      f"    - {{adapter: generic, hub: '{repository}', task: vqa, lang: en}}\n")
    from jobs.cli import main

    assert main(["render", str(config), "--out", str(tmp_path / "run")]) == 0
    manifest = json.loads((tmp_path / "run" / "render" / "manifest.json").read_text())
    assert manifest["image_files"] == ["images/00-generic-train.tar"]
    rows = pq.read_table(tmp_path / "run" / "render" / manifest["files"][0]).to_pylist()
    assert [r["id"] for r in rows] == ["colours:train:0", "colours:train:1", "colours:train:2"]
    images = [r["images"][0] for r in rows]
    assert images[0]["key"] == images[2]["key"] != images[1]["key"]  # one tar member per distinct picture
    assert images[0]["shard"] == "render/images/00-generic-train.tar"  # relative to the run folder
    assert (images[0]["width"], images[0]["height"], images[0]["path"]) == (40, 30, None)
    shards = TarShards()
    for image, colour in zip(images, [(254, 0, 0), (0, 0, 254), (254, 0, 0)]):
        pixel = load_image(image, root=tmp_path / "run", shards=shards).getpixel((20, 15))
        assert all(abs(a - b) <= 3 for a, b in zip(pixel, colour))


def test_raw_image_bytes_in_a_column_are_read_and_a_gif_becomes_a_png(tmp_path):
    import io

    gif = io.BytesIO()
    Image.new("RGB", (12, 8), "green").save(gif, "GIF")
    pq.write_table(pa.table({"picture": [jpeg("red"), gif.getvalue()], "text": ["A red picture.", "A green one."]}),
                   tmp_path / "caps.parquet")
    records = read_generic(str(tmp_path / "caps.parquet"), task="captioning", lang="en",
                           columns={"image": "picture", "caption": "text"})
    assert [(r["image"]["format"], r["image"]["width"], r["image"]["height"]) for r in records] == \
        [("jpg", 40, 30), ("png", 12, 8)]
    assert Image.open(io.BytesIO(records[1]["image"]["bytes"])).format == "PNG"


def test_bytes_that_are_not_an_image_name_the_row(tmp_path):
    pq.write_table(pa.table({"image": [jpeg("red"), b"<html>not found</html>"], "caption": ["red", "?"]}),
                   tmp_path / "caps.parquet")
    with pytest.raises(AnnotationError, match=r"caps.parquet: row 1: column 'image': 22 bytes that are not a "
                                              r"readable image"):
        read_generic(str(tmp_path / "caps.parquet"), task="captioning", lang="en")


def test_a_dataset_name_that_cannot_be_loaded_offline_says_so(offline_datasets):
    with pytest.raises(AnnotationError, match=r"hub nobody/no-such-dataset, split 'train': cannot be loaded \(offline: "
                                              r"HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set, so it must be in the "
                                              r"datasets cache\)"):
        read_generic(None, task="vqa", hub="nobody/no-such-dataset", lang="en")


def test_a_generic_entry_names_path_or_hub_not_both(tmp_path):
    from jobs.config import ConfigError
    from jobs.render import render_settings

    entry = {"adapter": "generic", "task": "vqa", "path": str(tmp_path / "a.jsonl"), "hub": "someone/colours"}
    with pytest.raises(ConfigError, match=r"render.datasets\[0\]: give `path` .* or `hub` .*, one of them"):
        render_settings({"render": {"datasets": [entry]}})
