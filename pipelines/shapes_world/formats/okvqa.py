"""Shapes-world scenes in the OK-VQA layout: VQA v1 questions + annotations files over COCO 2014 image names.

Layout under `out_dir`:

    okvqa/OpenEnded_mscoco_{train,val}2014_questions.json
    okvqa/mscoco_{train,val}2014_annotations.json
    coco/{train,val}2014/COCO_{subtype}_{image_id:012d}.jpg

OK-VQA asks what the picture alone does not say: here, which fruit shares a
shape's colour, or how many sides a polygon has. Five annotators answer
and each answer is written twice, as in the real files (ten answer entries,
v1.1's processed `answer` beside its `raw_answer`). Every answer is true of
the scene and the most common one is the intended answer.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import Scene, make_scene

SUBTYPES = ("train2014", "val2014")
FIRST_IMAGE_ID = {"train2014": 400_001, "val2014": 900_001}

# Five annotators' answers per colour; the first-listed, most common one is
# the fruit most people name. Every fruit named is commonly that colour.
FRUITS_BY_COLOUR = {
    "red": ("apple", "strawberry", "apple", "cherry", "apple"),
    "green": ("lime", "lime", "kiwi", "lime", "pear"),
    "blue": ("blueberry", "blueberry", "blueberry", "blueberry", "blueberry"),
    "yellow": ("banana", "lemon", "banana", "banana", "lemon"),
    "purple": ("grape", "plum", "grape", "grape", "plum"),
    "orange": ("orange", "orange", "tangerine", "orange", "orange"),
}
SIDES = {"triangle": 3, "square": 4, "hexagon": 6}
NUMBER_WORDS = {3: "three", 4: "four", 6: "six"}
# OK-VQA's question_type is its knowledge category: "five" is Cooking and
# Food, "nine" Science and Technology, "other" the rest.
FRUIT_CATEGORY = "five"
SIDES_CATEGORY = "nine"


def okvqa_scene(seed: int, subtype: str, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene of a subtype and the random stream its questions are drawn from."""
    rng = random.Random(f"shapes-world/{seed}/okvqa/{subtype}/{index}")
    return make_scene(rng), rng


def okvqa_questions(scene: Scene, rng: random.Random) -> list[dict]:
    """Knowledge questions true of the scene: {question, raw_answers (5), answers (5), question_type}.

    Only shapes whose kind is unique in the scene are asked about, so "the
    star" names one shape; a scene without one gets a counting question.
    """
    kinds = Counter(s.kind for s in scene.shapes)
    unique = [s for s in scene.shapes if kinds[s.kind] == 1]
    out = []
    if unique:
        shape = rng.choice(unique)
        fruits = FRUITS_BY_COLOUR[shape.colour]
        out.append(
            {
                "question": f"Which fruit is the same color as the {shape.kind}?",
                "raw_answers": list(fruits),
                "answers": list(fruits),
                "question_type": FRUIT_CATEGORY,
            }
        )
    polygons = [s for s in unique if s.kind in SIDES]
    if polygons:
        shape = rng.choice(polygons)
        sides = SIDES[shape.kind]
        raw = [str(sides), NUMBER_WORDS[sides], f"{sides} sides", str(sides), NUMBER_WORDS[sides]]
        out.append(
            {
                "question": f"How many sides does the {shape.kind} have?",
                "raw_answers": raw,
                # v1.1's processed answers write numbers as digits and drop the unit.
                "answers": [str(sides)] * len(raw),
                "question_type": SIDES_CATEGORY,
            }
        )
    if not out:
        total = len(scene.shapes)
        out.append(
            {
                "question": "How many shapes would you have to erase to leave the picture blank?",
                "raw_answers": [str(total), NUMBER_WORDS.get(total, str(total)), str(total), "all", str(total)],
                "answers": [str(total), str(total), str(total), "all", str(total)],
                "question_type": "other",
            }
        )
    return out


def most_common(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


def _info(seed: int) -> dict:
    return {
        "description": f"Loom shapes world (synthetic, seed {seed}) in the OK-VQA format.",
        "url": "",
        "version": "1.1",
        "year": 2019,
        "contributor": "Loom shapes world generator",
        "date_created": "2019-01-01 00:00:00",
    }


_LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0 International License"}


def _write_subtype(out: Path, seed: int, subtype: str, scenes: int, multiple_choice_answer: bool) -> dict:
    question_rows, answer_rows = [], []
    for i in range(scenes):
        image_id = FIRST_IMAGE_ID[subtype] + i
        scene, rng = okvqa_scene(seed, subtype, i)
        _write_bytes(out / "coco" / subtype / f"COCO_{subtype}_{image_id:012d}.jpg", encode_jpeg(draw_scene(scene)))
        for k, qa in enumerate(okvqa_questions(scene, rng)):
            question_id = image_id * 10 + k
            question_rows.append({"image_id": image_id, "question": qa["question"], "question_id": question_id})
            # Each of the five answers is written twice, annotator by annotator.
            pairs = [(answer, raw) for answer, raw in zip(qa["answers"], qa["raw_answers"]) for _ in range(2)]
            annotation = {
                "image_id": image_id,
                "answer_type": "other",
                "question_type": qa["question_type"],
                "question_id": question_id,
                "answers": [
                    {"answer_id": n, "raw_answer": raw, "answer_confidence": "yes", "answer": answer}
                    for n, (answer, raw) in enumerate(pairs, start=1)
                ],
            }
            if multiple_choice_answer:
                annotation["multiple_choice_answer"] = most_common(qa["answers"])
            answer_rows.append(annotation)

    folder = out / "okvqa"
    questions_file = folder / f"OpenEnded_mscoco_{subtype}_questions.json"
    annotations_file = folder / f"mscoco_{subtype}_annotations.json"
    _write_json(
        questions_file,
        {
            "info": _info(seed),
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "license": _LICENSE,
            "data_subtype": subtype,
            "questions": question_rows,
        },
    )
    _write_json(
        annotations_file,
        {"info": _info(seed), "license": _LICENSE, "data_subtype": subtype, "data_type": "mscoco", "annotations": answer_rows},
    )
    return {
        "questions_file": str(questions_file),
        "annotations_file": str(annotations_file),
        "images": str(out / "coco" / subtype),
        "image_count": scenes,
        "questions": len(question_rows),
    }


def write_okvqa(
    out_dir: str | os.PathLike, seed: int = 0, scenes: int = 12, multiple_choice_answer: bool = False
) -> dict:
    """Write `scenes` train2014 scenes and a quarter as many (at least one) val2014 scenes; return what was written.

    `multiple_choice_answer` adds VQA's field of that name (the most common
    answer) to each annotation, as some OK-VQA copies carry it.
    """
    if scenes < 1:
        raise ValueError(f"write_okvqa: scenes = {scenes}; expected at least 1")
    out = Path(out_dir)
    counts = {"train2014": scenes, "val2014": max(1, scenes // 4)}
    return {
        subtype: _write_subtype(out, seed, subtype, counts[subtype], multiple_choice_answer) for subtype in SUBTYPES
    }
