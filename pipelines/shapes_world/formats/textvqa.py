"""Shapes-world scenes with words on them, in the TextVQA 0.5.1 layout (+ Rosetta OCR files).

Layout under `out_dir`:

    TextVQA_0.5.1_{train,val,test}.json            questions (test without answers)
    TextVQA_Rosetta_OCR_v0.2_{train,val,test}.json  OCR tokens and boxes, one entry per image
    train_images/{image_id}.jpg                     train and val images
    test_images/{image_id}.jpg                      test images

Each image is a scene with a band under it holding one or two short words,
drawn with PIL's default font in distinct colours. The OCR entries list the
words and their boxes as drawn (normalised to 0-1), so the tokens are true
of the image; the questions ask what is written, and nine or so of the ten
answers name the word (a few workers answer "unanswerable").
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..draw import BACKGROUND_RGB, COLOUR_RGB, draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import Scene, make_scene

SPLITS = ("train", "val", "test")
IMAGE_FOLDER = {"train": "train_images", "val": "train_images", "test": "test_images"}
UNANSWERED_SPLITS = {"test"}
WORDS = ("stop", "open", "cafe", "exit", "sale", "taxi", "hotel", "pizza", "bank", "park", "menu", "milk", "gold", "jazz")
# Dark enough to read on every background; yellow and orange are not.
TEXT_COLOURS = ("red", "green", "blue", "purple")
TEXT_SIZE = 18
BAND_HEIGHT = 32
WORD_GAP = 14
ANSWERS_PER_QUESTION = 10
MAX_DISSENTING_ANSWERS = 3
FIRST_QUESTION_ID = {"train": 0, "val": 34602, "test": 39602}  # the real files number train, then val, then test


def text_font() -> ImageFont.ImageFont:
    """PIL's default font at TEXT_SIZE pixels."""
    return ImageFont.load_default(size=TEXT_SIZE)


def add_text_band(image: Image.Image, lines: list[list[tuple[str, str]]], background: str, where: str) -> tuple[Image.Image, list[list[tuple[int, int, int, int]]]]:
    """The image with a BAND_HEIGHT band per line added at its top or bottom, and each word's pixel box.

    `lines` is a list of lines, each a list of (word, colour name) drawn left
    to right and centred; `where` is "top" or "bottom". Words must fit the width.
    """
    font = text_font()
    width, height = image.size
    band_total = BAND_HEIGHT * len(lines)
    out = Image.new("RGB", (width, height + band_total), BACKGROUND_RGB[background])
    out.paste(image, (0, band_total if where == "top" else 0))
    canvas = ImageDraw.Draw(out)
    first_band_y = 0 if where == "top" else height
    boxes: list[list[tuple[int, int, int, int]]] = []
    for line_number, words in enumerate(lines):
        widths = [int(canvas.textlength(word, font=font)) for word, _ in words]
        line_width = sum(widths) + WORD_GAP * (len(words) - 1)
        if line_width > width - 4:
            raise ValueError(f"add_text_band: {' '.join(w for w, _ in words)!r} is {line_width} px; the image is {width} px wide")
        x = (width - line_width) // 2
        top = first_band_y + line_number * BAND_HEIGHT
        line_boxes = []
        for (word, colour), word_width in zip(words, widths):
            canvas.text((x, top + BAND_HEIGHT // 2), word, font=font, fill=COLOUR_RGB[colour], anchor="lm")
            line_boxes.append(tuple(int(v) for v in canvas.textbbox((x, top + BAND_HEIGHT // 2), word, font=font, anchor="lm")))
            x += word_width + WORD_GAP
        boxes.append(line_boxes)
    return out, boxes


def textvqa_scene(seed: int, split: str, index: int) -> tuple[Scene, list[tuple[str, str]], random.Random]:
    """The index-th scene of a split, its (word, colour) pairs left to right, and the stream its questions use."""
    rng = random.Random(f"shapes-world/{seed}/textvqa/{split}/{index}")
    scene = make_scene(rng, min_side=128)
    words = rng.sample(WORDS, rng.choice((1, 2)))
    colours = rng.sample(TEXT_COLOURS, len(words))
    return scene, list(zip(words, colours)), rng


def textvqa_image_id(seed: int, split: str, index: int) -> str:
    """A 16-hex-digit id, the form of TextVQA's Open Images ids."""
    return hashlib.sha1(f"{seed}/{split}/{index}".encode()).hexdigest()[:16]


def _questions(words: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if len(words) == 1:
        return [("what word is written on the image?", words[0][0])]
    (left, left_colour), (right, right_colour) = words
    return [
        (f"what word is written in {left_colour}?", left),
        ("what is the word on the right?", right),
    ]


def _answers(truth: str, other_words: list[str], rng: random.Random) -> list[str]:
    dissent = rng.randint(0, MAX_DISSENTING_ANSWERS)
    answers = [truth] * (ANSWERS_PER_QUESTION - dissent) + [rng.choice(["unanswerable", *other_words]) for _ in range(dissent)]
    rng.shuffle(answers)
    return answers


def rosetta_ocr_row(image_id: str, words: list, boxes: list, size: tuple[int, int]) -> dict:
    """One image's entry of a Rosetta OCR file: its words and their boxes as fractions of the image."""
    width, height = size
    return {
        "image_id": image_id,
        "ocr_tokens": [word for word, _ in words],
        "ocr_info": [
            {"word": word, "bounding_box": {
                "top_left_x": x0 / width, "top_left_y": y0 / height,
                "width": (x1 - x0) / width, "height": (y1 - y0) / height,
                "rotation": 0.0, "roll": 0.0, "pitch": 0.0, "yaw": 0.0}}
            for (word, _), (x0, y0, x1, y1) in zip(words, boxes)
        ],
    }


def write_textvqa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 6) -> dict:
    """Write `scenes` images per split (train, val, test) in the TextVQA layout under `out_dir`."""
    out = Path(out_dir)
    summary = {"files": {}, "ocr_files": {}, "questions": {}, "images": {}}
    for split in SPLITS:
        rows, ocr_rows = [], []
        question_id = FIRST_QUESTION_ID[split]
        for i in range(scenes):
            scene, words, rng = textvqa_scene(seed, split, i)
            image, (boxes,) = add_text_band(draw_scene(scene), [words], scene.background, "bottom")
            image_id = textvqa_image_id(seed, split, i)
            _write_bytes(out / IMAGE_FOLDER[split] / f"{image_id}.jpg", encode_jpeg(image))
            width, height = image.size
            ocr_rows.append(rosetta_ocr_row(image_id, words, boxes, image.size))
            for question, answer in _questions(words):
                row = {
                    "question": question,
                    "image_id": image_id,
                    "image_classes": sorted({s.kind.title() for s in scene.shapes}),
                    "flickr_original_url": "",
                    "flickr_300k_url": "",
                    "image_width": width,
                    "image_height": height,
                    "question_tokens": question.rstrip("?").split(),
                    "question_id": question_id,
                    "set_name": split,
                }
                if split not in UNANSWERED_SPLITS:
                    row["answers"] = _answers(answer, [w for w, _ in words if w != answer], rng)
                rows.append(row)
                question_id += 1
        path = out / f"TextVQA_0.5.1_{split}.json"
        _write_json(path, {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": rows})
        ocr_path = out / f"TextVQA_Rosetta_OCR_v0.2_{split}.json"
        _write_json(ocr_path, {"data": ocr_rows})
        summary["files"][split] = str(path)
        summary["ocr_files"][split] = str(ocr_path)
        summary["questions"][split] = len(rows)
        summary["images"][split] = str(out / IMAGE_FOLDER[split])
    return summary
