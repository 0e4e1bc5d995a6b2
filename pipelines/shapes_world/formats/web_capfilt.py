"""Shapes-world scenes in the layout of LAVIS's CapFilt annotation.json: a list of {"image", "caption"}.

Layout under `out_dir`:

    annotation.json                     image paths as published: absolute, on the authors' machine
    images/{source}/{number:09d}.jpg    the same images where a user keeps them (image_root = images)

The published file's paths begin with AUTHORS_PREFIX (illustrative: the
real prefix is an internal Salesforce path that no public file shows in
full), followed by the source web dataset's folder and the file name, so a
reader must swap the prefix for a local image root. The sources reuse file
numbers, as real crawls do, so only the whole relative path names an image.
Captions are lower-case without a full stop, the way BLIP's captioner
writes them, and true of the scene.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import Scene, captions, make_scene

AUTHORS_PREFIX = "/export/share/datasets/vision/capfilt/"
SOURCES = ("cc3m", "cc12m", "sbu")


def web_capfilt_scene(seed: int, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene and the random stream its caption is drawn from."""
    rng = random.Random(f"shapes-world/{seed}/web_capfilt/{index}")
    return make_scene(rng), rng


def web_capfilt_relative_path(index: int) -> str:
    """source/number.jpg; each source numbers its files from 0, so numbers repeat across sources."""
    return f"{SOURCES[index % len(SOURCES)]}/{index // len(SOURCES):09d}.jpg"


def web_capfilt_caption(scene: Scene, rng: random.Random) -> str:
    return captions(scene, "en", rng, count=1)[0].rstrip(".").lower()


def write_web_capfilt(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 9) -> dict:
    """Write `scenes` image-caption pairs in the CapFilt annotation.json layout under `out_dir`."""
    out = Path(out_dir)
    rows = []
    for i in range(scenes):
        scene, rng = web_capfilt_scene(seed, i)
        relative = web_capfilt_relative_path(i)
        _write_bytes(out / "images" / relative, encode_jpeg(draw_scene(scene)))
        rows.append({"image": AUTHORS_PREFIX + relative, "caption": web_capfilt_caption(scene, rng)})
    path = out / "annotation.json"
    _write_json(path, rows)
    return {"file": str(path), "image_root": str(out / "images"), "strip_prefix": AUTHORS_PREFIX, "pairs": len(rows)}
