"""Shapes-world chats in the LLaVA-Instruct-150K layout: train2017/*.jpg and the three part files plus the merged one.

Every scene gets one record in each part, as a COCO image can in the real
release: a multi-turn chat of questions() and their answers
(conversation_58k.json), a request for a detailed description answered
with captions() (detail_23k.json), and a question that needs one step of
arithmetic over the shape count (complex_reasoning_77k.json).
llava_instruct_150k.json holds the three parts one after another, so each
image id appears in it three times.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import NUMBER_EN, Scene, captions, make_scene, questions

PART_FILES = {
    "llava_conversation": "conversation_58k.json",
    "llava_detail": "detail_23k.json",
    "llava_complex_reasoning": "complex_reasoning_77k.json",
}
MERGED_FILE = "llava_instruct_150k.json"
FIRST_IMAGE_ID = 215_677
DETAIL_PROMPT = "Describe the following image in detail."


def llava_scene(seed: int, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene and the random stream its conversations are drawn from."""
    rng = random.Random(f"shapes-world/{seed}/llava_instruct/{index}")
    return make_scene(rng), rng


def image_id(index: int) -> str:
    """The COCO-style id LLaVA uses for both `id` and the image file name."""
    return f"{FIRST_IMAGE_ID + index:012d}"


def _with_image(question: str, index: int) -> str:
    # LLaVA puts <image> before or after the first question; the fixture does both.
    return f"<image>\n{question}" if index % 2 == 0 else f"{question}\n<image>"


def scene_conversations(seed: int, index: int) -> dict[str, list[tuple[str, str]]]:
    """(question, answer) pairs per part for the index-th scene, without the <image> token."""
    scene, rng = llava_scene(seed, index)
    chat = [(qa["question"], qa["answer"]) for qa in questions(scene, rng)]
    detail = [(DETAIL_PROMPT, " ".join(captions(scene, "en", rng, count=3)))]
    total = len(scene.shapes)
    after = total + 1
    reasoning = [(
        "If one more shape were drawn in this picture, how many shapes would it show?",
        f"The picture shows {NUMBER_EN[total]} shape{'s' if total > 1 else ''} now, "
        f"so with one more it would show {after}.",
    )]
    return {"llava_conversation": chat, "llava_detail": detail, "llava_complex_reasoning": reasoning}


def _record(index: int, pairs: list[tuple[str, str]]) -> dict:
    turns = []
    for n, (question, answer) in enumerate(pairs):
        turns.append({"from": "human", "value": _with_image(question, index) if n == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return {"id": image_id(index), "image": f"{image_id(index)}.jpg", "conversations": turns}


def write_llava_instruct(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 8) -> dict:
    """Write `scenes` images under out_dir/train2017 and the four LLaVA JSON files beside it."""
    out = Path(out_dir)
    parts: dict[str, list[dict]] = {name: [] for name in PART_FILES}
    for index in range(scenes):
        scene, _ = llava_scene(seed, index)
        _write_bytes(out / "train2017" / f"{image_id(index)}.jpg", encode_jpeg(draw_scene(scene)))
        for dataset, pairs in scene_conversations(seed, index).items():
            parts[dataset].append(_record(index, pairs))
    for dataset, rows in parts.items():
        _write_json(out / PART_FILES[dataset], rows)
    _write_json(out / MERGED_FILE, [row for rows in parts.values() for row in rows])
    return {
        "image_root": str(out / "train2017"),
        "files": {PART_FILES[d]: len(rows) for d, rows in parts.items()} | {MERGED_FILE: 3 * scenes},
        "turns": {PART_FILES[d]: sum(len(r["conversations"]) for r in rows) for d, rows in parts.items()},
    }
