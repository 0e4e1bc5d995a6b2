"""Shapes-world memes in the Hateful Memes layout: img/*.png and the five official JSONL files.

A meme is a scene with a caption bar under it. The texts are harmless; the
stand-in for "hateful" (label 1) is a rule that, like the real confounders,
needs both the picture and the words: label 0 when the text is a true
caption of the scene, label 1 when it is a caption of another scene whose
shapes differ, so the text is false of this picture.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..draw import draw_scene
from ..export import _write_bytes
from ..scenes import Scene, captions, make_scene

FILES = ("train.jsonl", "dev_seen.jsonl", "dev_unseen.jsonl", "test_seen.jsonl", "test_unseen.jsonl")
# Test files are written without labels: the card says they may lack them.
UNLABELLED = {"test_seen.jsonl", "test_unseen.jsonl"}
FIRST_ID = 1235  # below 10000, so ids like 1235 name zero-padded files like img/01235.png
ID_STEP = 3797
CAPTION_BAR = 40  # pixels of white under the scene for the meme text
LABEL_HATEFUL_EVERY = 2  # every second meme gets a text that is false of its picture


def meme_scene(seed: int, index: int) -> tuple[Scene, random.Random]:
    """The scene of the index-th meme and the random stream its text is drawn from."""
    rng = random.Random(f"shapes-world/{seed}/hateful_memes/{index}")
    return make_scene(rng), rng


def meme_id(index: int) -> int:
    return FIRST_ID + index * ID_STEP


def _looks(scene: Scene) -> Counter:
    return Counter((s.colour, s.kind) for s in scene.shapes)


def meme_text(seed: int, index: int) -> tuple[str, int]:
    """(text, label): a true caption (label 0) or a caption of a scene with other shapes (label 1)."""
    scene, rng = meme_scene(seed, index)
    if index % LABEL_HATEFUL_EVERY == 0:
        return captions(scene, "en", rng, count=1)[0], 0
    for attempt in range(100):
        other_rng = random.Random(f"shapes-world/{seed}/hateful_memes/{index}/other/{attempt}")
        other = make_scene(other_rng)
        # Every caption lists the looks of its scene, so other looks make it false here.
        if _looks(other) != _looks(scene):
            return captions(other, "en", other_rng, count=1)[0], 1
    raise RuntimeError(f"meme {index}: no scene with other shapes in 100 tries")


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width - 4:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + [current]


def draw_meme(scene: Scene, text: str) -> Image.Image:
    """The scene with a white caption bar below it holding the text in black."""
    picture = draw_scene(scene)
    meme = Image.new("RGB", (scene.width, scene.height + CAPTION_BAR), (255, 255, 255))
    meme.paste(picture, (0, 0))
    draw = ImageDraw.Draw(meme)
    font = ImageFont.load_default()
    for n, line in enumerate(_wrap(draw, text, font, scene.width)[:3]):
        draw.text((2, scene.height + 1 + 12 * n), line, fill=(0, 0, 0), font=font)
    return meme


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_hateful_memes(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 10) -> dict:
    """Write `scenes` memes under `out_dir` (img/ and the five JSONL files) and say what went where.

    Meme i goes to FILES[i % 5]; its id is meme_id(i) and its image
    img/{id:05d}.png, its text and label come from meme_text(seed, i).
    """
    out = Path(out_dir)
    rows: dict[str, list[dict]] = {name: [] for name in FILES}
    hateful = 0
    for index in range(scenes):
        scene, _ = meme_scene(seed, index)
        text, label = meme_text(seed, index)
        hateful += label
        image_name = f"img/{meme_id(index):05d}.png"
        meme = draw_meme(scene, text)
        _write_bytes(out / image_name, _png(meme))
        file_name = FILES[index % len(FILES)]
        row = {"id": meme_id(index), "img": image_name, "label": label, "text": text}
        if file_name in UNLABELLED:
            del row["label"]
        rows[file_name].append(row)
    for name, file_rows in rows.items():
        _write_bytes(out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in file_rows).encode("utf-8"))
    return {
        "root": str(out),
        "files": {name: len(file_rows) for name, file_rows in rows.items()},
        "images": scenes,
        "hateful": hateful,
    }
