"""Shapes-world problems in the IconQA layout: iconqa_data/iconqa/{split}/{sub_task}/{pid}/ plus problems.json and pid_splits.json.

Scene i is problem pid str(100 + i) in split SPLITS[i % 3] and sub-task
SUB_TASKS[(i // 3) % 3]:
- choose_txt: a question from questions() with 2-5 text choices, the true
  answer and false answers of the same kind (other colours, kinds, counts,
  the opposite side);
- choose_img: "Which of these shapes is in the picture?" with 2-5 choice
  images of one shape each (choice_0.png, ...), exactly one of a look
  (colour and kind) that the scene has;
- fill_in_blank: a count question whose answer is the number as text.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from ..draw import draw_scene
from ..export import _write_bytes, _write_json
from ..scenes import COLOURS, SHAPE_KINDS, Scene, Shape, make_scene, questions

SPLITS = ("train", "val", "test")
SUB_TASKS = ("choose_txt", "choose_img", "fill_in_blank")
OPPOSITES = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "above": "below",
             "below": "above", "yes": "no", "no": "yes"}
CHOICE_SIDE = 48
CHOOSE_IMG_QUESTION = "Which of these shapes is in the picture?"


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def iconqa_pid(index: int) -> str:
    return str(100 + index)


def iconqa_placement(index: int) -> tuple[str, str]:
    """(split, sub_task) of the index-th scene's problem."""
    return SPLITS[index % len(SPLITS)], SUB_TASKS[(index // len(SPLITS)) % len(SUB_TASKS)]


def iconqa_scene(seed: int, index: int) -> tuple[Scene, random.Random]:
    """The index-th scene and the random stream its problem is drawn from."""
    rng = random.Random(f"shapes-world/{seed}/iconqa/{index}")
    return make_scene(rng), rng


def _false_answers(qa: dict, rng: random.Random, count: int) -> list[str]:
    answer = qa["answer"]
    if qa["question_type"] == "colour":
        return rng.sample([c for c in COLOURS if c != answer], count)
    if qa["question_type"] == "shape":
        return rng.sample([k for k in SHAPE_KINDS if k != answer], count)
    if qa["question_type"] == "count":
        return [str(n) for n in rng.sample([n for n in range(8) if str(n) != answer], count)]
    return [OPPOSITES[answer]]


def _choice_shape(colour: str, kind: str) -> Scene:
    margin = 6
    return Scene(CHOICE_SIDE, CHOICE_SIDE, "white",
                 [Shape(kind, colour, margin, margin, CHOICE_SIDE - margin, CHOICE_SIDE - margin)])


def iconqa_problem(seed: int, index: int) -> tuple[dict, dict]:
    """(data.json of the index-th problem, truth) where truth says what each choice is.

    truth: {"answer": the true answer text (choose_txt, fill_in_blank) or
    None, "looks": [(colour, kind)] per choice image (choose_img) or None}.
    """
    scene, rng = iconqa_scene(seed, index)
    _, sub_task = iconqa_placement(index)
    if sub_task == "choose_txt":
        qa = rng.choice(questions(scene, rng))
        false = _false_answers(qa, rng, rng.randint(1, 4))
        choices = [qa["answer"], *false]
        rng.shuffle(choices)
        problem = {"question": qa["question"], "choices": choices, "answer": choices.index(qa["answer"])}
        truth = {"answer": qa["answer"], "looks": None}
    elif sub_task == "choose_img":
        present = sorted({(s.colour, s.kind) for s in scene.shapes})
        absent = [(c, k) for c in COLOURS for k in SHAPE_KINDS if (c, k) not in present]
        looks = [rng.choice(present), *rng.sample(absent, rng.randint(1, 4))]
        rng.shuffle(looks)
        right = next(n for n, look in enumerate(looks) if look in present)
        problem = {"question": CHOOSE_IMG_QUESTION, "choices": [f"choice_{n}.png" for n in range(len(looks))],
                   "answer": right}
        truth = {"answer": None, "looks": looks}
    else:
        kind = rng.choice([s.kind for s in scene.shapes])
        count = sum(s.kind == kind for s in scene.shapes)
        problem = {"question": f"How many {kind}s are there?", "answer": str(count)}
        truth = {"answer": str(count), "looks": None}
    problem.update({"ques_type": sub_task, "grade": "grade1", "label": "S1"})
    return problem, truth


def write_iconqa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 18) -> dict:
    """Write out_dir/data/iconqa_data/{iconqa/, problems.json, pid_splits.json}; see the module docstring."""
    root = Path(out_dir) / "data" / "iconqa_data"
    problems: dict[str, dict] = {}
    pid_splits: dict[str, list[str]] = {f"{t}_{s}": [] for t in SUB_TASKS for s in SPLITS}
    for index in range(scenes):
        split, sub_task = iconqa_placement(index)
        pid = iconqa_pid(index)
        scene, _ = iconqa_scene(seed, index)
        problem, truth = iconqa_problem(seed, index)
        folder = root / "iconqa" / split / sub_task / pid
        _write_json(folder / "data.json", problem, indent=4)
        _write_bytes(folder / "image.png", _png(draw_scene(scene)))
        for n, look in enumerate(truth["looks"] or []):
            _write_bytes(folder / f"choice_{n}.png", _png(draw_scene(_choice_shape(*look))))
        problems[pid] = {**problem, "split": split}
        pid_splits[f"{sub_task}_{split}"].append(pid)
    for sub_task in SUB_TASKS:
        pid_splits[f"{sub_task}_trainval"] = pid_splits[f"{sub_task}_train"] + pid_splits[f"{sub_task}_val"]
        for split in SPLITS:
            listed = pid_splits[f"{sub_task}_{split}"]
            pid_splits[f"{sub_task}_mini{split}"] = listed[: max(1, len(listed) // 2)] if listed else []
    _write_json(root / "problems.json", problems)
    _write_json(root / "pid_splits.json", pid_splits)
    return {
        "data_root": str(root),
        "problems_file": str(root / "problems.json"),
        "splits_file": str(root / "pid_splits.json"),
        "problems": len(problems),
        "lists": {key: len(pids) for key, pids in pid_splits.items()},
    }
