"""Hateful Memes JSONL files read into canonical classification records."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog.adapters.hateful_memes import read_hateful_memes
from catalog.cards import get_card
from pipelines.shapes_world.formats.hateful_memes import (
    CAPTION_BAR,
    FILES,
    meme_id,
    meme_scene,
    meme_text,
    write_hateful_memes,
)
from pipelines.shapes_world.scenes import captions

SEED, SCENES = 4, 12


@pytest.fixture(scope="module")
def memes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hateful_memes")
    summary = write_hateful_memes(out, seed=SEED, scenes=SCENES)
    assert sum(summary["files"].values()) == SCENES and 0 < summary["hateful"] < SCENES
    return out


def rewrite(source: Path, tmp_path: Path, lines: list[str]) -> Path:
    target = tmp_path / source.name
    target.write_text("".join(line + "\n" for line in lines))
    (tmp_path / "img").symlink_to(source.parent / "img")
    return target


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_every_file_reads_back_one_record_per_meme_in_file_order(memes):
    for number, name in enumerate(FILES):
        split = name.removesuffix(".jsonl")
        records = read_hateful_memes(memes / name, memes, split)
        indexes = list(range(number, SCENES, len(FILES)))
        assert [r["id"] for r in records] == [f"hateful_memes:{split}:{meme_id(i)}" for i in indexes]
        for record in records:
            assert (record["dataset"], record["task"], record["split"], record["lang"]) == (
                "hateful_memes", "classification", split, "en")


def test_text_and_label_follow_the_rule_true_caption_means_not_hateful(memes):
    records = read_hateful_memes(memes / "train.jsonl", memes, "train") + read_hateful_memes(
        memes / "dev_seen.jsonl", memes, "dev_seen")
    assert {r["label"] for r in records} == {0, 1}
    for record in records:
        index = (int(record["id"].rsplit(":", 1)[1]) - meme_id(0)) // (meme_id(1) - meme_id(0))
        scene, _ = meme_scene(SEED, index)
        assert (record["text"], record["label"]) == meme_text(SEED, index)
        true_captions = captions(scene, "en", meme_scene(SEED, index)[1], count=50)
        if record["label"] == 0:
            assert record["answer"] == "no" and record["text"] in true_captions
        else:
            assert record["answer"] == "yes" and record["text"] not in true_captions


def test_unlabelled_test_files_give_no_label_and_no_answer(memes):
    records = read_hateful_memes(memes / "test_unseen.jsonl", memes, "test_unseen")
    assert records and all(r["label"] is None and r["answer"] is None for r in records)


def test_image_is_the_zero_padded_png_with_its_true_size(memes, monkeypatch):
    monkeypatch.chdir(memes.parent)
    records = read_hateful_memes(memes / "train.jsonl", Path(memes.name), "train")
    for record in records:
        path = Path(record["image"]["path"])
        native_id = int(record["id"].rsplit(":", 1)[1])
        assert path.is_absolute() and path.name == f"{native_id:05d}.png"
        index = (native_id - meme_id(0)) // (meme_id(1) - meme_id(0))
        scene, _ = meme_scene(SEED, index)
        assert (record["image"]["width"], record["image"]["height"]) == (scene.width, scene.height + CAPTION_BAR)
        assert Image.open(path).size == (record["image"]["width"], record["image"]["height"])
    assert any(Path(r["image"]["path"]).name.startswith("0") for r in records)


def test_a_line_that_is_not_json_names_the_file_and_line(memes, tmp_path):
    lines = lines_of(memes / "train.jsonl")
    lines[1] = lines[1][:-1]
    broken = rewrite(memes / "train.jsonl", tmp_path, lines)
    with pytest.raises(AnnotationError, match=r"train\.jsonl: line 2: not valid JSON"):
        read_hateful_memes(broken, tmp_path, "train")


def test_a_missing_text_names_file_line_and_field(memes, tmp_path):
    lines = lines_of(memes / "dev_seen.jsonl")
    row = json.loads(lines[1])
    del row["text"]
    lines[1] = json.dumps(row)
    broken = rewrite(memes / "dev_seen.jsonl", tmp_path, lines)
    with pytest.raises(AnnotationError, match=r"dev_seen\.jsonl: line 2: missing field 'text'"):
        read_hateful_memes(broken, tmp_path, "dev_seen")


@pytest.mark.parametrize("label, message", [
    ("1", r"field 'label' is a string .*expected an integer"),
    (2, r"field 'label' is 2; expected 0 \(not hateful\) or 1 \(hateful\)"),
    (True, r"field 'label' is a boolean"),
])
def test_a_bad_label_names_file_line_and_field(memes, tmp_path, label, message):
    lines = lines_of(memes / "train.jsonl")
    row = json.loads(lines[0])
    row["label"] = label
    lines[0] = json.dumps(row)
    broken = rewrite(memes / "train.jsonl", tmp_path, lines)
    with pytest.raises(AnnotationError, match=r"train\.jsonl: line 1: " + message):
        read_hateful_memes(broken, tmp_path, "train")


def test_a_meme_whose_image_is_missing_is_named(memes, tmp_path):
    lines = lines_of(memes / "train.jsonl")
    row = json.loads(lines[2])
    row["img"] = "img/99999.png"
    lines[2] = json.dumps(row)
    broken = rewrite(memes / "train.jsonl", tmp_path, lines)
    with pytest.raises(AnnotationError, match=r"train\.jsonl: line 3: field 'img' names 'img/99999\.png', but there is no image"):
        read_hateful_memes(broken, tmp_path, "train")


def test_an_id_that_repeats_names_both_lines(memes, tmp_path):
    lines = lines_of(memes / "train.jsonl")
    broken = rewrite(memes / "train.jsonl", tmp_path, lines + [lines[0]])
    with pytest.raises(AnnotationError, match=rf"line {len(lines) + 1}: id {meme_id(0)} already appears on line 1"):
        read_hateful_memes(broken, tmp_path, "train")


def test_blank_lines_are_skipped_and_string_ids_are_kept(memes, tmp_path):
    lines = lines_of(memes / "train.jsonl")
    row = json.loads(lines[0])
    row["id"] = "01235"
    broken = rewrite(memes / "train.jsonl", tmp_path, [json.dumps(row), ""] + lines[1:])
    records = read_hateful_memes(broken, tmp_path, "train")
    assert len(records) == len(lines) and records[0]["id"] == "hateful_memes:train:01235"
    assert Counter(r["label"] for r in records) == Counter(json.loads(line)["label"] for line in lines)


def test_the_hateful_memes_card_names_the_reader():
    module, _, attribute = get_card("hateful_memes")["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is read_hateful_memes
