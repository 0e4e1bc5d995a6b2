"""Shapes-world problems in the ScienceQA layout: problems.json, pid_splits.json and images/{split}/{pid}/image.png.

Each scene gives one image problem: a question from questions() whose
answer is the one true choice, the others being answers of the same kind
that are false of the scene (other colours, kinds or counts, the opposite
side). Every second scene also gives a text-only problem about shapes in
general, with `image` null, as about half of ScienceQA's problems are.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from ..draw import draw_scene
from ..export import _write_bytes, _write_json
from ..scenes import COLOURS, SHAPE_KINDS, Scene, make_scene, questions

SPLITS = ("train", "val", "test")
OPPOSITES = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "above": "below",
             "below": "above", "yes": "no", "no": "yes"}
TEXT_ONLY = (
    ("Which of these shapes has three corners?", "triangle"),
    ("Which of these shapes has four equal sides?", "square"),
    ("Which of these shapes has six sides?", "hexagon"),
    ("Which of these shapes has no corners?", "circle"),
)
LECTURE = "A shape's name says how many sides and corners it has. Colors are seen by looking at the shape."


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scienceqa_scene(seed: int, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene and the random stream its problem is drawn from."""
    rng = random.Random(f"shapes-world/{seed}/scienceqa/{index}")
    return make_scene(rng), rng


def _false_choices(qa: dict, rng: random.Random) -> list[str]:
    answer = qa["answer"]
    if qa["question_type"] == "colour":
        return rng.sample([c for c in COLOURS if c != answer], 3)
    if qa["question_type"] == "shape":
        return rng.sample([k for k in SHAPE_KINDS if k != answer], 3)
    if qa["question_type"] == "count":
        return [str(n) for n in rng.sample([n for n in range(7) if str(n) != answer], 3)]
    return [OPPOSITES[answer]]


def image_problem(seed: int, index: int) -> tuple[dict, str]:
    """(problem without its split, the true answer) for the index-th scene."""
    scene, rng = scienceqa_scene(seed, index)
    qa = rng.choice(questions(scene, rng))
    choices = [qa["answer"], *_false_choices(qa, rng)]
    rng.shuffle(choices)
    problem = {
        "question": qa["question"],
        "choices": choices,
        "answer": choices.index(qa["answer"]),
        "hint": f"The picture has a {scene.background} background." if index % 2 else "",
        "image": "image.png",
        "task": "yes or no" if qa["answer"] in ("yes", "no") else "closed choice",
        "grade": "grade1",
        "subject": "natural science",
        "topic": "shapes",
        "category": "Shapes and colors",
        "skill": f"Answer a {qa['question_type']} question about a picture",
        "lecture": LECTURE,
        "solution": f"Look at the picture. The answer is {qa['answer']}.",
    }
    return problem, qa["answer"]


def text_problem(seed: int, index: int) -> dict:
    """A problem with no image, about shapes in general."""
    rng = random.Random(f"shapes-world/{seed}/scienceqa/text/{index}")
    question, answer = rng.choice(TEXT_ONLY)
    choices = [answer, *rng.sample([k for k in SHAPE_KINDS if k != answer], 2)]
    rng.shuffle(choices)
    return {
        "question": question, "choices": choices, "answer": choices.index(answer), "hint": "", "image": None,
        "task": "closed choice", "grade": "grade1", "subject": "natural science", "topic": "shapes",
        "category": "Shapes and colors", "skill": "Know shapes by their sides", "lecture": LECTURE,
        "solution": f"A {answer} fits the description.",
    }


def write_scienceqa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 9) -> dict:
    """Write out_dir/data/scienceqa/{problems.json, pid_splits.json, images/}.

    Scene i is problem id str(2 * i + 1) in split SPLITS[i % 3]; for odd i,
    the text-only problem str(2 * i + 2) follows it in the same split.
    """
    root = Path(out_dir) / "data" / "scienceqa"
    problems: dict[str, dict] = {}
    pid_splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for index in range(scenes):
        split = SPLITS[index % len(SPLITS)]
        scene, _ = scienceqa_scene(seed, index)
        pid = str(2 * index + 1)
        problem, _ = image_problem(seed, index)
        problems[pid] = {**problem, "split": split}
        pid_splits[split].append(pid)
        _write_bytes(root / "images" / split / pid / "image.png", _png(draw_scene(scene)))
        if index % 2:
            text_pid = str(2 * index + 2)
            problems[text_pid] = {**text_problem(seed, index), "split": split}
            pid_splits[split].append(text_pid)
    pid_splits["trainval"] = pid_splits["train"] + pid_splits["val"]
    pid_splits["minitest"] = pid_splits["test"][: max(1, len(pid_splits["test"]) // 2)]
    _write_json(root / "problems.json", problems)
    _write_json(root / "pid_splits.json", pid_splits)
    return {
        "problems_file": str(root / "problems.json"),
        "splits_file": str(root / "pid_splits.json"),
        "image_root": str(root / "images"),
        "problems": len(problems),
        "with_image": scenes,
        "splits": {split: len(pids) for split, pids in pid_splits.items()},
    }
