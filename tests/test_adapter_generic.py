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
