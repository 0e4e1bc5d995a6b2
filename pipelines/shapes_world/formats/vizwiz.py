"""Shapes-world scenes in the VizWiz VQA layout: Annotations/{split}.json and {split}/VizWiz_{split}_{index:08d}.jpg.

One question per image, ten crowd answers each with an answer_confidence.
Most questions come from the shapes world's true question-answer pairs; a
few ask to read a label that is not there, which VizWiz answers with
"unanswerable" (answerable 0, answer_type "unanswerable"). A minority of
workers answer "unanswerable" to answerable questions too, as real workers
do, so the most common answer is still the true one. test.json carries only
image and question, as the real one does.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import Scene, make_scene, questions

SPLITS = ("train", "val", "test")
UNANSWERED_SPLITS = {"test"}
UNANSWERABLE_EVERY = 4  # every fourth image gets a question the picture cannot answer
UNANSWERABLE_QUESTIONS = ("What does the label on this say?", "What is the expiration date on this?", "What brand is this?")
ANSWERS_PER_QUESTION = 10
MAX_DISSENTING_ANSWERS = 3


def vizwiz_image_name(split: str, index: int) -> str:
    return f"VizWiz_{split}_{index:08d}.jpg"


def vizwiz_scene(seed: int, split: str, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene of a split and the random stream its question and answers are drawn from."""
    rng = random.Random(f"shapes-world/{seed}/vizwiz/{split}/{index}")
    return make_scene(rng), rng


def vizwiz_question(seed: int, split: str, index: int) -> dict:
    """{question, answer, answer_type, answerable} of the index-th image: true of its scene."""
    scene, rng = vizwiz_scene(seed, split, index)
    if index % UNANSWERABLE_EVERY == UNANSWERABLE_EVERY - 1:
        return {"question": rng.choice(UNANSWERABLE_QUESTIONS), "answer": "unanswerable",
                "answer_type": "unanswerable", "answerable": 0}
    qa = rng.choice(questions(scene, rng))
    return {"question": qa["question"], "answer": qa["answer"], "answer_type": qa["answer_type"], "answerable": 1}


def _crowd_answers(truth: str, rng: random.Random) -> list[dict]:
    dissent = 0 if truth == "unanswerable" else rng.randint(0, MAX_DISSENTING_ANSWERS)
    answers = [{"answer": truth, "answer_confidence": rng.choice(("yes", "yes", "maybe"))}
               for _ in range(ANSWERS_PER_QUESTION - dissent)]
    answers += [{"answer": "unanswerable", "answer_confidence": rng.choice(("maybe", "no"))} for _ in range(dissent)]
    rng.shuffle(answers)
    return answers


def write_vizwiz(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 8) -> dict:
    """Write `scenes` images per split (train, val, test) in the VizWiz layout under `out_dir`."""
    out = Path(out_dir)
    summary = {"files": {}, "questions": {}, "image_folders": {}}
    for split in SPLITS:
        rows = []
        for i in range(scenes):
            scene, _ = vizwiz_scene(seed, split, i)
            name = vizwiz_image_name(split, i)
            _write_bytes(out / split / name, encode_jpeg(draw_scene(scene)))
            qa = vizwiz_question(seed, split, i)
            if split in UNANSWERED_SPLITS:
                rows.append({"image": name, "question": qa["question"]})
                continue
            answer_rng = random.Random(f"shapes-world/{seed}/vizwiz/{split}/{i}/answers")
            rows.append({
                "image": name,
                "question": qa["question"],
                "answers": _crowd_answers(qa["answer"], answer_rng),
                "answer_type": qa["answer_type"],
                "answerable": qa["answerable"],
            })
        path = out / "Annotations" / f"{split}.json"
        _write_json(path, rows)
        summary["files"][split] = str(path)
        summary["questions"][split] = len(rows)
        summary["image_folders"][split] = str(out / split)
    return summary
