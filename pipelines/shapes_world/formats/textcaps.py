"""Shapes-world scenes with words on them, in the TextCaps 0.1 layout (+ TextVQA Rosetta OCR files).

Layout under `out_dir`:

    TextCaps_0.1_{train,val,test}.json              one row per caption (test: one row per image, no captions)
    TextVQA_Rosetta_OCR_v0.2_{train,val,test}.json  OCR tokens and boxes, one entry per image
    train_images/{image_id}.jpg                     train and val images (TextCaps reuses TextVQA's)
    test_images/{image_id}.jpg                      test images

Each image is a scene with a band under it holding one or two words in
distinct colours, drawn by textvqa.add_text_band. Every caption is a true
shapes-world caption followed by the words drawn under it, in their
colours, so a caption is true only if the words are read.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import Scene, captions, make_scene
from .textvqa import TEXT_COLOURS, WORDS, add_text_band, rosetta_ocr_row

SPLITS = ("train", "val", "test")
IMAGE_FOLDER = {"train": "train_images", "val": "train_images", "test": "test_images"}
UNCAPTIONED_SPLITS = {"test"}
CAPTIONS_PER_IMAGE = 5
FIRST_CAPTION_ID = {"train": 0, "val": 200000}
_TEMPLATES = (
    "{scene} above {text}.",
    "{scene}, with {text} written below.",
    "{scene}; underneath, {text}.",
)


def textcaps_scene(seed: int, split: str, index: int) -> tuple[Scene, list[tuple[str, str]], random.Random]:
    """The index-th scene of a split, its (word, colour) pairs left to right, and the stream its captions use."""
    rng = random.Random(f"shapes-world/{seed}/textcaps/{split}/{index}")
    scene = make_scene(rng, min_side=128)
    words = rng.sample(WORDS, rng.choice((1, 2)))
    colours = rng.sample(TEXT_COLOURS, len(words))
    return scene, list(zip(words, colours)), rng


def textcaps_image_id(seed: int, split: str, index: int) -> str:
    """A 16-hex-digit id, the form of TextCaps's Open Images ids."""
    return hashlib.sha1(f"textcaps/{seed}/{split}/{index}".encode()).hexdigest()[:16]


def _text_phrase(words: list[tuple[str, str]]) -> str:
    if len(words) == 1:
        word, colour = words[0]
        return f'the word "{word}" in {colour}'
    return "the words " + " and ".join(f'"{word}" in {colour}' for word, colour in words)


def textcaps_captions(scene: Scene, words: list[tuple[str, str]], rng: random.Random) -> list[str]:
    """CAPTIONS_PER_IMAGE true captions that name the scene and the words written under it."""
    text = _text_phrase(words)
    return [
        _TEMPLATES[n % len(_TEMPLATES)].format(scene=base.rstrip("."), text=text)
        for n, base in enumerate(captions(scene, "en", rng, count=CAPTIONS_PER_IMAGE))
    ]


def _tokens(caption: str) -> list[str]:
    return ["<s>", *re.findall(r"[a-z0-9]+", caption.lower()), "</s>"]


def write_textcaps(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 6) -> dict:
    """Write `scenes` images per split (train, val, test) in the TextCaps layout under `out_dir`."""
    out = Path(out_dir)
    summary = {"files": {}, "ocr_files": {}, "captions": {}, "images": {}}
    for split in SPLITS:
        rows, ocr_rows = [], []
        caption_id = FIRST_CAPTION_ID.get(split, 0)
        for i in range(scenes):
            scene, words, rng = textcaps_scene(seed, split, i)
            image, (boxes,) = add_text_band(draw_scene(scene), [words], scene.background, "bottom")
            image_id = textcaps_image_id(seed, split, i)
            _write_bytes(out / IMAGE_FOLDER[split] / f"{image_id}.jpg", encode_jpeg(image))
            width, height = image.size
            ocr_rows.append(rosetta_ocr_row(image_id, words, boxes, image.size))
            base = {
                "image_id": image_id,
                "image_classes": sorted({s.kind.title() for s in scene.shapes}),
                "flickr_original_url": "",
                "flickr_300k_url": "",
                "image_width": width,
                "image_height": height,
                "set_name": split,
                "image_name": image_id,
                "image_path": f"{'test' if split == 'test' else 'train'}/{image_id}.jpg",
            }
            if split in UNCAPTIONED_SPLITS:
                rows.append(base)
                continue
            references = textcaps_captions(scene, words, rng)
            for caption in references:
                rows.append({
                    **base,
                    "caption_id": caption_id,
                    "caption_str": caption,
                    "caption_tokens": _tokens(caption),
                    "reference_strs": list(references),
                    "reference_tokens": [_tokens(r) for r in references],
                })
                caption_id += 1
        path = out / f"TextCaps_0.1_{split}.json"
        _write_json(path, {"dataset_type": split, "dataset_name": "textcaps", "dataset_version": 0.1, "data": rows})
        ocr_path = out / f"TextVQA_Rosetta_OCR_v0.2_{split}.json"
        _write_json(ocr_path, {"data": ocr_rows})
        summary["files"][split] = str(path)
        summary["ocr_files"][split] = str(ocr_path)
        summary["captions"][split] = 0 if split in UNCAPTIONED_SPLITS else len(rows)
        summary["images"][split] = str(out / IMAGE_FOLDER[split])
    return summary
