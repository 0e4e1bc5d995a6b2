"""Shapes-world scenes in the nocaps layout (COCO-style captions with Open Images ids and a domain per image).

Layout under `out_dir` (as LAVIS's download script leaves it):

    nocaps_val_4500_captions.json    images + annotations (one per caption)
    nocaps_test_image_info.json      images only; test captions are not released
    val/{open_images_id}.jpg
    test/{open_images_id}.jpg

Every val image has the shapes world's true English captions (up to ten,
as many distinct ones as the scene allows; real nocaps has exactly ten).
Domains cycle through in-domain, near-domain and out-domain: a shapes scene
has no real distance from COCO, so the label only exercises the field.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import Scene, captions, make_scene

FILES = {"val": "nocaps_val_4500_captions.json", "test": "nocaps_test_image_info.json"}
DOMAINS = ("in-domain", "near-domain", "out-domain")
CAPTIONS_PER_IMAGE = 10
_LICENSES = [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 0, "name": "Attribution License"}]


def nocaps_scene(seed: int, split: str, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene of a split and the random stream its captions are drawn from."""
    rng = random.Random(f"shapes-world/{seed}/nocaps/{split}/{index}")
    return make_scene(rng), rng


def nocaps_open_images_id(seed: int, split: str, index: int) -> str:
    """A 16-hex-digit id, the form of Open Images ids."""
    return hashlib.sha1(f"nocaps/{seed}/{split}/{index}".encode()).hexdigest()[:16]


def nocaps_domain(index: int) -> str:
    return DOMAINS[index % len(DOMAINS)]


def write_nocaps(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 9) -> dict:
    """Write `scenes` images per split (val with captions, test without) in the nocaps layout under `out_dir`."""
    out = Path(out_dir)
    summary = {"files": {}, "image_folders": {}, "images": {}, "captions": {}}
    for split, file_name in FILES.items():
        images, annotations = [], []
        for i in range(scenes):
            scene, rng = nocaps_scene(seed, split, i)
            open_images_id = nocaps_open_images_id(seed, split, i)
            _write_bytes(out / split / f"{open_images_id}.jpg", encode_jpeg(draw_scene(scene)))
            images.append({
                "id": i,
                "open_images_id": open_images_id,
                "height": scene.height,
                "width": scene.width,
                "coco_url": f"https://s3.amazonaws.com/nocaps/{split}/{open_images_id}.jpg",
                "file_name": f"{open_images_id}.jpg",
                "license": 0,
                "date_captured": "2018-11-06 11:04:33",
                "domain": nocaps_domain(i),
            })
            if split == "val":
                for caption in captions(scene, "en", rng, count=CAPTIONS_PER_IMAGE):
                    annotations.append({"image_id": i, "id": len(annotations), "caption": caption})
        data = {
            "licenses": _LICENSES,
            "info": {"url": "http://nocaps.org", "date_created": "2018/11/06", "version": "0.1",
                     "description": f"nocaps {split} (Loom shapes world, seed {seed})", "contributor": "Loom shapes world generator", "year": 2018},
            "images": images,
        }
        if split == "val":
            data["annotations"] = annotations
        path = out / file_name
        _write_json(path, data)
        summary["files"][split] = str(path)
        summary["image_folders"][split] = str(out / split)
        summary["images"][split] = len(images)
        summary["captions"][split] = len(annotations)
    return summary
