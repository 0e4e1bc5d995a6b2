"""Shapes-world scenes in the A-OKVQA v1.0 layout: one JSON list per split over COCO 2017 image names.

Layout under `out_dir`:

    aokvqa/aokvqa_v1p0_{train,val,test}.json
    coco/{train,val,test}2017/{image_id:012d}.jpg

Each question has four choices: the correct one is true of the scene and
the other three are plausible for the question but false of it. Ten direct
answers and three rationales (sentences true of the scene) go with it,
and difficult_direct_answer is true where the direct answers disagree. As
in the official test file, test questions carry no correct_choice_idx,
direct_answers or rationales.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import COLOURS, NUMBER_EN, Scene, captions, make_scene

SPLITS = ("train", "val", "test")
FIRST_IMAGE_ID = {"train": 700_001, "val": 800_001, "test": 850_001}
QUESTIONS_PER_SCENE = 2
# The shortuuid alphabet: A-OKVQA question ids are 22 of these, e.g. "22MexNkBPpdZGX6sxbxVBH".
ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

# The fruit that is the colour, and every colour each fruit can be: a
# distractor must not be able to be the shape's colour (green grapes exist).
FRUIT_OF_COLOUR = {
    "red": "strawberry",
    "green": "lime",
    "blue": "blueberry",
    "yellow": "banana",
    "purple": "grape",
    "orange": "tangerine",
}
FRUIT_COLOURS = {
    "strawberry": {"red"},
    "lime": {"green"},
    "blueberry": {"blue"},
    "banana": {"yellow", "green"},
    "grape": {"purple", "green"},
    "tangerine": {"orange"},
}
# Ten free-form answers per colour: the choice's fruit leads, the others are also that colour.
DIRECT_FRUITS = {
    "red": ["strawberry"] * 4 + ["apple"] * 3 + ["cherry"] * 3,
    "green": ["lime"] * 4 + ["kiwi"] * 3 + ["green apple"] * 3,
    "blue": ["blueberry"] * 9 + ["blueberries"],
    "yellow": ["banana"] * 4 + ["lemon"] * 3 + ["pineapple"] * 3,
    "purple": ["grape"] * 4 + ["grapes"] * 3 + ["plum"] * 3,
    "orange": ["tangerine"] * 4 + ["orange"] * 3 + ["clementine"] * 3,
}
SIDES = {"triangle": 3, "square": 4, "hexagon": 6}


def aokvqa_scene(seed: int, split: str, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene of a split and the random stream its questions are drawn from."""
    rng = random.Random(f"shapes-world/{seed}/aokvqa/{split}/{index}")
    return make_scene(rng), rng


def _question(question: str, correct: str, distractors: list[str], direct: list[str], rationales: list[str],
              rng: random.Random) -> dict:
    choices = [correct] + rng.sample(distractors, 3)
    rng.shuffle(choices)
    return {
        "question": question,
        "choices": choices,
        "correct_choice_idx": choices.index(correct),
        "direct_answers": direct,
        "rationales": rationales,
    }


def aokvqa_questions(scene: Scene, rng: random.Random) -> list[dict]:
    """Up to QUESTIONS_PER_SCENE multiple-choice questions true of the scene, with direct answers and rationales."""
    kinds = Counter(s.kind for s in scene.shapes)
    unique = [s for s in scene.shapes if kinds[s.kind] == 1]
    caption = captions(scene, "en", rng, count=1)[0]
    pool = []
    if unique:
        shape = rng.choice(unique)
        others = [c for c in COLOURS if c != shape.colour]
        pool.append(
            _question(
                f"What color is the {shape.kind} in the picture?",
                shape.colour,
                others,
                [shape.colour] * 10,
                [f"The {shape.kind} is {shape.colour}.", f"There is one {shape.kind} and it is colored {shape.colour}.", caption],
                rng,
            )
        )
        shape = rng.choice(unique)
        fruit = FRUIT_OF_COLOUR[shape.colour]
        pool.append(
            _question(
                f"Which fruit is usually the same color as the {shape.kind}?",
                fruit,
                [f for f, colours in FRUIT_COLOURS.items() if shape.colour not in colours],
                list(DIRECT_FRUITS[shape.colour]),
                [f"The {shape.kind} is {shape.colour}.", f"A ripe {fruit} is {shape.colour}.",
                 f"The {shape.kind} has the color of a {fruit}."],
                rng,
            )
        )
    polygons = [s for s in unique if s.kind in SIDES]
    if polygons:
        shape = rng.choice(polygons)
        sides = SIDES[shape.kind]
        pool.append(
            _question(
                f"How many corners does the {shape.kind} have?",
                str(sides),
                [str(n) for n in range(2, 9) if n != sides],
                [str(sides)] * 8 + [NUMBER_EN[sides]] * 2,
                [f"The shape is a {shape.kind}.", f"A {shape.kind} has {NUMBER_EN[sides]} corners.", caption],
                rng,
            )
        )
    total = len(scene.shapes)
    pool.append(
        _question(
            "How many shapes would be left if one of them were erased?",
            str(total - 1),
            [str(n) for n in range(0, 7) if n != total - 1],
            [str(total - 1)] * 7 + [NUMBER_EN.get(total - 1, str(total - 1))] * 3 if total > 1 else ["0"] * 7 + ["none"] * 3,
            [f"There {'is' if total == 1 else 'are'} {NUMBER_EN[total]} {'shape' if total == 1 else 'shapes'} in the picture.",
             "Erasing one shape leaves one fewer.", caption],
            rng,
        )
    )
    picked = sorted(rng.sample(range(len(pool)), min(QUESTIONS_PER_SCENE, len(pool))))
    return [pool[i] for i in picked]


def _question_id(seed: int, split: str, index: int, k: int) -> str:
    rng = random.Random(f"shapes-world/{seed}/aokvqa-id/{split}/{index}/{k}")
    return "".join(rng.choice(ID_ALPHABET) for _ in range(22))


def _write_split(out: Path, seed: int, split: str, scenes: int) -> dict:
    rows = []
    for i in range(scenes):
        image_id = FIRST_IMAGE_ID[split] + i
        scene, rng = aokvqa_scene(seed, split, i)
        _write_bytes(out / "coco" / f"{split}2017" / f"{image_id:012d}.jpg", encode_jpeg(draw_scene(scene)))
        for k, qa in enumerate(aokvqa_questions(scene, rng)):
            top = Counter(qa["direct_answers"]).most_common(1)[0][1]
            row = {
                "split": split,
                "image_id": image_id,
                "question_id": _question_id(seed, split, i, k),
                "question": qa["question"],
                "choices": qa["choices"],
                "correct_choice_idx": qa["correct_choice_idx"],
                "direct_answers": qa["direct_answers"],
                # Disagreeing annotators make a direct answer hard to score.
                "difficult_direct_answer": top < 5,
                "rationales": qa["rationales"],
            }
            if split == "test":
                for hidden in ("correct_choice_idx", "direct_answers", "rationales"):
                    del row[hidden]
            rows.append(row)
    path = out / "aokvqa" / f"aokvqa_v1p0_{split}.json"
    _write_json(path, rows)
    return {"file": str(path), "images": str(out / "coco" / f"{split}2017"), "image_count": scenes, "questions": len(rows)}


def write_aokvqa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 12) -> dict:
    """Write `scenes` train scenes and a quarter as many (at least one) val and test scenes; return what was written."""
    if scenes < 1:
        raise ValueError(f"write_aokvqa: scenes = {scenes}; expected at least 1")
    out = Path(out_dir)
    counts = {"train": scenes, "val": max(1, scenes // 4), "test": max(1, scenes // 4)}
    return {split: _write_split(out, seed, split, counts[split]) for split in SPLITS}
