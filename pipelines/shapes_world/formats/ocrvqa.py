"""Shapes-world book covers in the OCR-VQA layout: dataset.json and images/{key}.jpg.

A cover is a scene with its title in a band above it and its author in a
band below, drawn with PIL's default font. The title names a look on the
cover ("Red Stars"), so it is true of the picture too. dataset.json is one
dict keyed by a 10-digit ASIN-like key for all splits (split 1/2/3 =
train/val/test); each cover is asked OCR-VQA's "Who wrote this book?" and
"What is the title of this book?", answered by the text drawn on it.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import KIND_PLURAL, Scene, make_scene
from .textvqa import add_text_band

SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
# Of every five covers, three are train, one val and one test (the real file is about 80/10/10).
SPLIT_CYCLE = ("train", "train", "train", "val", "test")
AUTHORS = ("Ada Park", "Ben Okoro", "Cai Lin", "Dana Ruiz", "Eli Stone", "Fay Moss", "Gus Hale", "Ivy Chen")
GENRES = ("Arts & Photography", "Children's Books", "Crafts, Hobbies & Home", "Science & Math")
COVER_SIDE = 176
TITLE_COLOUR, AUTHOR_COLOUR = "blue", "purple"


def ocrvqa_key(index: int) -> str:
    return f"{1_560_000_000 + 7919 * index:010d}"


def ocrvqa_cover(seed: int, index: int) -> tuple[Scene, dict]:
    """The index-th cover's scene and its {title, authorName, genre, split}."""
    rng = random.Random(f"shapes-world/{seed}/ocrvqa/{index}")
    scene = make_scene(rng, width=COVER_SIDE, height=COVER_SIDE)
    looks = Counter((s.colour, s.kind) for s in scene.shapes)
    (colour, kind), count = rng.choice(sorted(looks.items()))
    title = f"{colour.title()} {(KIND_PLURAL[kind] if count > 1 else kind).title()}"
    return scene, {
        "title": title,
        "authorName": rng.choice(AUTHORS),
        "genre": rng.choice(GENRES),
        "split": SPLIT_CYCLE[index % len(SPLIT_CYCLE)],
    }


def write_ocrvqa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 10) -> dict:
    """Write `scenes` covers and dataset.json in the OCR-VQA layout under `out_dir`."""
    out = Path(out_dir)
    dataset: dict[str, dict] = {}
    per_split = Counter()
    for i in range(scenes):
        scene, book = ocrvqa_cover(seed, i)
        image, _ = add_text_band(draw_scene(scene), [[(book["title"], TITLE_COLOUR)]], scene.background, "top")
        image, _ = add_text_band(image, [[(book["authorName"], AUTHOR_COLOUR)]], scene.background, "bottom")
        key = ocrvqa_key(i)
        _write_bytes(out / "images" / f"{key}.jpg", encode_jpeg(image))
        dataset[key] = {
            "imageURL": f"http://ecx.images-amazon.example/images/I/{key}.jpg",
            "questions": ["Who wrote this book?", "What is the title of this book?"],
            "answers": [book["authorName"], book["title"]],
            "title": book["title"],
            "authorName": book["authorName"],
            "genre": book["genre"],
            "split": SPLIT_CODES[book["split"]],
        }
        per_split[book["split"]] += 2
    path = out / "dataset.json"
    _write_json(path, dataset)
    return {"file": str(path), "images": str(out / "images"), "covers": scenes, "questions": dict(per_split)}
