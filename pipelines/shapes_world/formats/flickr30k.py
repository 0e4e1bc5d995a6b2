"""Shapes-world scenes in Karpathy's Flickr30K layout: dataset_flickr30k.json + flickr30k-images/{filename}.

One file holds all images; each says its split (train, val or test) and
carries five sentences with 'raw' text and lower-cased 'tokens'. imgid and
sentid count up through the file, as Karpathy's do; file names are numeric
like Flickr photo ids. Splits go train, train, train, val, test, repeating.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import Scene, captions, make_scene

SPLIT_CYCLE = ("train", "train", "train", "val", "test")
SENTENCES_PER_IMAGE = 5
FIRST_FILE_NUMBER = 1000092795  # the first file name of the real Flickr30K


def flickr30k_scene(seed: int, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene of the file and the random stream its sentences are drawn from."""
    rng = random.Random(f"shapes-world/{seed}/flickr30k/{index}")
    return make_scene(rng), rng


def flickr30k_split(index: int) -> str:
    return SPLIT_CYCLE[index % len(SPLIT_CYCLE)]


def flickr30k_filename(index: int) -> str:
    return f"{FIRST_FILE_NUMBER + 7919 * index}.jpg"


def _tokens(raw: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", raw.lower())


def write_flickr30k(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 10) -> dict:
    """Write `scenes` images in Karpathy's Flickr30K layout under `out_dir`."""
    out = Path(out_dir)
    images = []
    sentid = 0
    for i in range(scenes):
        scene, rng = flickr30k_scene(seed, i)
        filename = flickr30k_filename(i)
        _write_bytes(out / "flickr30k-images" / filename, encode_jpeg(draw_scene(scene)))
        sentences = []
        for raw in captions(scene, "en", rng, count=SENTENCES_PER_IMAGE):
            sentences.append({"tokens": _tokens(raw), "raw": raw, "imgid": i, "sentid": sentid})
            sentid += 1
        images.append({
            "sentids": [s["sentid"] for s in sentences],
            "imgid": i,
            "sentences": sentences,
            "split": flickr30k_split(i),
            "filename": filename,
        })
    path = out / "dataset_flickr30k.json"
    _write_json(path, {"images": images, "dataset": "flickr30k"})
    counts = {split: sum(1 for image in images if image["split"] == split) for split in ("train", "val", "test")}
    return {"file": str(path), "image_folder": str(out / "flickr30k-images"), "images": counts, "sentences": sentid}
