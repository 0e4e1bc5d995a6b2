"""Shapes-world scenes in the GQA balanced-questions layout: images/{imageId}.jpg and {split}_balanced_questions.json.

Each split file is a dict keyed by question id (a string of digits) with
GQA's camelCase fields. Questions are asked in GQA's own phrasings and
carry GQA's type triples (structural, semantic, detailed) as the real file
spells them, e.g. verify/attr/verifyAttrC or choose/attr/positionChoose.
GQA has no counting questions, so none are written. Answers and full
answers are read off the scene, so they are true of the image.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import COLOURS, KIND_PLURAL, MIN_SEPARATION, Scene, Shape, make_scene

SPLITS = ("train", "val", "testdev")
QUESTIONS_PER_SCENE = 4
# Visual Genome image ids are either plain numbers (2354786) or n-prefixed (n161313); both kinds are written.
FIRST_IMAGE_NUMBER = 2_354_700


def gqa_scene(seed: int, split: str, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene of a split and the random stream its questions are drawn from."""
    rng = random.Random(f"shapes-world/{seed}/gqa/{split}/{index}")
    return make_scene(rng), rng


def gqa_image_id(split: str, index: int) -> str:
    number = FIRST_IMAGE_NUMBER + 1000 * SPLITS.index(split) + index
    return f"n{number}" if index % 2 else str(number)


def _names(scene: Scene) -> dict[Shape, str]:
    """Each shape that can be named without ambiguity: "circle" when its kind is unique, else "red circle"."""
    kinds = Counter(s.kind for s in scene.shapes)
    looks = Counter((s.colour, s.kind) for s in scene.shapes)
    names = {}
    for s in scene.shapes:
        if kinds[s.kind] == 1:
            names[s] = s.kind
        elif looks[(s.colour, s.kind)] == 1:
            names[s] = f"{s.colour} {s.kind}"
    return names


def _entry(question: str, answer: str, full_answer: str, types: tuple[str, str, str], program: list[dict]) -> dict:
    structural, semantic, detailed = types
    return {
        "question": question,
        "answer": answer,
        "fullAnswer": full_answer,
        "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
        "semantic": program,
    }


def _select(shape_name: str, object_id: str) -> dict:
    return {"operation": "select", "dependencies": [], "argument": f"{shape_name} ({object_id})"}


def _questions(scene: Scene, rng: random.Random, object_ids: dict[Shape, str]) -> list[dict]:
    names = _names(scene)
    kind_named = [s for s, name in names.items() if name == s.kind]
    out: list[dict] = []
    for s in kind_named:  # colour questions only where the kind alone names the shape
        select = _select(s.kind, object_ids[s])
        out.append(_entry(f"What color is the {s.kind}?", s.colour, f"The {s.kind} is {s.colour}.",
                          ("query", "attr", "queryAttr"), [select, {"operation": "query", "dependencies": [0], "argument": "color"}]))
        asked = rng.choice([c for c in COLOURS if c != s.colour] + [s.colour])
        yes = asked == s.colour
        out.append(_entry(f"Is the {s.kind} {asked}?", "yes" if yes else "no",
                          f"{'Yes' if yes else 'No'}, the {s.kind} is {s.colour}.",
                          ("verify", "attr", "verifyAttrC"), [select, {"operation": "verify color", "dependencies": [0], "argument": asked}]))
        other = rng.choice([c for c in COLOURS if c != s.colour])
        pair = [s.colour, other]
        rng.shuffle(pair)
        out.append(_entry(f"Is the {s.kind} {pair[0]} or {pair[1]}?", s.colour, f"The {s.kind} is {s.colour}.",
                          ("choose", "attr", "chooseAttr"), [select, {"operation": "choose color", "dependencies": [0], "argument": "|".join(pair)}]))
    looks = {(s.colour, s.kind) for s in scene.shapes}
    colour, kind = rng.choice(sorted(looks))
    if rng.random() < 0.5:
        colour = rng.choice([c for c in COLOURS if (c, kind) not in looks])
    present = (colour, kind) in looks
    out.append(_entry(f"Are there {colour} {KIND_PLURAL[kind]} in the image?", "yes" if present else "no",
                      f"Yes, there is a {colour} {kind}." if present else f"No, there are no {colour} {KIND_PLURAL[kind]}.",
                      ("verify", "obj", "existAttrC"),
                      [{"operation": "select", "dependencies": [], "argument": f"{kind} (-)"},
                       {"operation": "filter color", "dependencies": [0], "argument": colour},
                       {"operation": "exist", "dependencies": [1], "argument": "?"}]))
    for s, name in names.items():
        cx = s.centre[0]
        if 0.4 * scene.width <= cx <= 0.6 * scene.width:
            continue
        side = "left" if cx < 0.4 * scene.width else "right"
        asked = rng.choice(("left", "right"))
        select = _select(name, object_ids[s])
        out.append(_entry(f"Is the {name} on the {asked} of the image?", "yes" if asked == side else "no",
                          f"{'Yes' if asked == side else 'No'}, the {name} is on the {side} of the image.",
                          ("verify", "attr", "positionVerify"), [select, {"operation": "verify hposition", "dependencies": [0], "argument": asked}]))
        out.append(_entry(f"On which side of the image is the {name}, the right or the left?", side,
                          f"The {name} is on the {side} of the image.",
                          ("choose", "attr", "positionChoose"), [select, {"operation": "choose hposition", "dependencies": [0], "argument": "left|right"}]))
    for a, a_name in names.items():
        for b, b_name in names.items():
            if a is not b and a.x1 + MIN_SEPARATION <= b.x0:  # whole boxes apart, so it holds for every pixel
                program = [_select(b_name, object_ids[b]),
                           {"operation": "verify rel", "dependencies": [0], "argument": f"{a_name},to the left of,s ({object_ids[a]})"}]
                out.append(_entry(f"Is the {a_name} to the left of the {b_name}?", "yes",
                                  f"Yes, the {a_name} is to the left of the {b_name}.", ("verify", "rel", "relVerify"), program))
                out.append(_entry(f"Is the {b_name} to the left of the {a_name}?", "no",
                                  f"No, the {b_name} is to the right of the {a_name}.", ("verify", "rel", "relVerify"), program))
    rng.shuffle(out)
    return out[:QUESTIONS_PER_SCENE]


def write_gqa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 6) -> dict:
    """Write `scenes` scenes per split (train, val, testdev) as GQA balanced questions under `out_dir`.

    Layout: images/{imageId}.jpg and {split}_balanced_questions.json. Returns
    the files written and the question count per split.
    """
    out = Path(out_dir)
    summary = {"images": str(out / "images"), "files": {}, "questions": {}}
    for split_number, split in enumerate(SPLITS):
        questions: dict[str, dict] = {}
        for i in range(scenes):
            scene, rng = gqa_scene(seed, split, i)
            image_id = gqa_image_id(split, i)
            _write_bytes(out / "images" / f"{image_id}.jpg", encode_jpeg(draw_scene(scene)))
            object_ids = {s: f"{1_000_000 + 10_000 * split_number + 10 * i + j}" for j, s in enumerate(scene.shapes)}
            for k, entry in enumerate(_questions(scene, rng, object_ids)):
                question_id = f"{split_number + 1:02d}{i:04d}{k:02d}"
                questions[question_id] = {
                    "semantic": entry["semantic"],
                    "entailed": [],
                    "equivalent": [question_id],
                    "question": entry["question"],
                    "imageId": image_id,
                    "isBalanced": True,
                    "groups": {"global": None, "local": None},
                    "answer": entry["answer"],
                    "semanticStr": "->".join(f"{op['operation']}: {op['argument']}" for op in entry["semantic"]),
                    "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                    "types": entry["types"],
                    "fullAnswer": entry["fullAnswer"],
                }
        path = out / f"{split}_balanced_questions.json"
        _write_json(path, questions)
        summary["files"][split] = str(path)
        summary["questions"][split] = len(questions)
    return summary
