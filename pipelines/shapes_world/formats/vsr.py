"""Shapes-world statements in the VSR layout: data/splits/zeroshot/{train,dev,test}.jsonl and a flat images/ folder.

Each scene gives two statements such as "The red circle is left of the
blue square.", one true and one false, about two shapes whose looks are
unique in the scene. A statement is labelled by the scene's geometry:
"left of" is true when the first shape's whole box ends at least
MIN_SEPARATION pixels before the second one's starts (and "above" the same
vertically); its false twin swaps the two shapes, so the label is never a
close call.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes
from ..scenes import MIN_SEPARATION, Scene, Shape, make_scene

SPLITS = ("train", "dev", "test")
FIRST_IMAGE_ID = 17_697
RELATIONS = ("left of", "right of", "above", "below")


def _holds(relation: str, a: Shape, b: Shape) -> bool:
    """Whether "a is <relation> b" holds for every pixel of both shapes."""
    if relation == "left of":
        return a.x1 + MIN_SEPARATION <= b.x0
    if relation == "right of":
        return b.x1 + MIN_SEPARATION <= a.x0
    if relation == "above":
        return a.y1 + MIN_SEPARATION <= b.y0
    return b.y1 + MIN_SEPARATION <= a.y0


def statements(scene: Scene) -> list[dict]:
    """Every clear-cut statement about two uniquely-looking shapes: caption, label, relation, subj, obj."""
    looks = Counter((s.colour, s.kind) for s in scene.shapes)
    unique = [s for s in scene.shapes if looks[(s.colour, s.kind)] == 1]
    out = []
    for a in unique:
        for b in unique:
            for relation in RELATIONS:
                # A statement and its swap are asked only when one of them clearly holds.
                if a is b or not (_holds(relation, a, b) or _holds(relation, b, a)):
                    continue
                out.append({
                    "caption": f"The {a.name} is {relation} the {b.name}.",
                    "label": int(_holds(relation, a, b)),
                    "relation": relation,
                    "subj": a.name,
                    "obj": b.name,
                })
    return out


def vsr_scene(seed: int, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene (the first draw with a clear-cut statement) and the stream that picks its statements."""
    for attempt in range(100):
        rng = random.Random(f"shapes-world/{seed}/vsr/{index}/{attempt}")
        scene = make_scene(rng, shape_count=rng.randint(2, 4))
        if statements(scene):
            return scene, rng
    raise RuntimeError(f"vsr scene {index}: no scene with two separated shapes in 100 draws")


def scene_statements(seed: int, index: int) -> list[dict]:
    """One true and one false statement about the index-th scene, true first or not as the stream says."""
    scene, rng = vsr_scene(seed, index)
    every = statements(scene)
    chosen = [rng.choice([s for s in every if s["label"] == label]) for label in (1, 0)]
    rng.shuffle(chosen)
    return chosen


def image_name(index: int) -> str:
    return f"{FIRST_IMAGE_ID + 1009 * index:012d}.jpg"


def write_vsr(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 9) -> dict:
    """Write `scenes` images under out_dir/images and two statements each into the zero-shot JSONL files.

    Scene i goes to SPLITS[i % 3]; every third image is linked from val2017, the rest from train2017.
    """
    out = Path(out_dir)
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for index in range(scenes):
        scene, _ = vsr_scene(seed, index)
        name = image_name(index)
        _write_bytes(out / "images" / name, encode_jpeg(draw_scene(scene)))
        folder = "val2017" if index % 3 == 2 else "train2017"
        for n, statement in enumerate(scene_statements(seed, index)):
            rows[SPLITS[index % len(SPLITS)]].append({
                "image": name,
                "image_link": f"http://images.cocodataset.org/{folder}/{name}",
                "caption": statement["caption"],
                "label": statement["label"],
                "relation": statement["relation"],
                "subj": statement["subj"],
                "obj": statement["obj"],
                "annotator_id": index % 5,
                # The current files write the validator lists as strings.
                "vote_true_validator_id": "[18, 2]" if statement["label"] else "[1]",
                "vote_false_validator_id": "[1]" if statement["label"] else "[18, 2]",
            })
    folder = out / "data" / "splits" / "zeroshot"
    for split, split_rows in rows.items():
        _write_bytes(folder / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in split_rows).encode("utf-8"))
    return {
        "annotation_dir": str(folder),
        "image_root": str(out / "images"),
        "files": {f"{split}.jsonl": len(split_rows) for split, split_rows in rows.items()},
        "images": scenes,
    }
