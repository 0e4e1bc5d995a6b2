"""Shapes-world dialogs in the Visual Dialog v1.0 layout: visdial_1.0_{train,val,test}.json and the image folders.

Scene i is a dialog of split SPLITS[i % 3] on image id 1000 + i: a caption
from captions() and 3-10 rounds of distinct questions from questions(),
written the VisDial way (lowercase, no question mark). Each file stores
its questions and answers once and rounds refer to them by index; every
round's answer_options are the true answer and others drawn from the
file's answer pool (its answers plus DISTRACTORS), at most OPTIONS of them.
Test dialogs stop after 1-N rounds: their last round has answer_options
but no answer or gt_index, and earlier rounds have only question and
answer, as in the real test file. Every third train image is a COCO
val2014 image, as VisDial's train split uses both COCO folders.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ..draw import draw_scene, encode_jpeg
from ..export import _write_bytes, _write_json
from ..scenes import Scene, captions, make_scene, questions

SPLITS = ("train", "val", "test")
OPTIONS = 100
DISTRACTORS = (
    "yes", "no", "i can't tell", "not sure", "maybe", "0", "1", "2", "3", "4", "5", "6", "red", "green", "blue",
    "yellow", "purple", "orange", "white", "circle", "square", "triangle", "star", "hexagon", "left", "right",
    "top", "bottom", "above", "below", "yes, it is", "no, it isn't",
)


def visdial_image_id(index: int) -> int:
    return 1000 + index


def visdial_image_name(split: str, index: int) -> str:
    """The image's path under the image root, in the folder the real split uses."""
    image_id = visdial_image_id(index)
    if split == "train":
        folder = "val2014" if index % 9 == 6 else "train2014"  # every third train scene (i = 6, 15, ...)
        return f"{folder}/COCO_{folder}_{image_id:012d}.jpg"
    return f"VisualDialog_{split}2018/VisualDialog_{split}2018_{image_id:012d}.jpg"


def _visdial_text(question: str) -> str:
    return question.lower().rstrip("?")


def visdial_dialog(seed: int, index: int) -> tuple[Scene, str, list[tuple[str, str]]]:
    """(scene, caption, [(question, answer)] for every round) of the index-th dialog, before test truncation."""
    rng = random.Random(f"shapes-world/{seed}/visdial/{index}")
    scene = make_scene(rng)
    caption = captions(scene, "en", rng, count=1)[0].lower().rstrip(".")
    wanted = rng.randint(3, 10)
    rounds: dict[str, str] = {}
    for _attempt in range(40):
        for qa in questions(scene, rng):
            rounds.setdefault(_visdial_text(qa["question"]), qa["answer"])
        if len(rounds) >= wanted:
            break
    return scene, caption, list(rounds.items())[:wanted]


def visdial_test_rounds(seed: int, index: int, rounds: int) -> int:
    """How many rounds the index-th dialog keeps in the test file (1 to all)."""
    return random.Random(f"shapes-world/{seed}/visdial/test-length/{index}").randint(1, rounds)


def _write_split(root: Path, seed: int, split: str, scene_indices: list[int]) -> dict:
    question_pool: list[str] = []
    answer_pool: list[str] = []

    def index_of(pool: list[str], text: str) -> int:
        if text not in pool:
            pool.append(text)
        return pool.index(text)

    dialogs = []
    for index in scene_indices:
        scene, caption, rounds = visdial_dialog(seed, index)
        _write_bytes(root / visdial_image_name(split, index), encode_jpeg(draw_scene(scene)))
        if split == "test":
            rounds = rounds[: visdial_test_rounds(seed, index, len(rounds))]
        dialogs.append((index, caption, [(index_of(question_pool, q), index_of(answer_pool, a)) for q, a in rounds]))
    for distractor in DISTRACTORS:
        index_of(answer_pool, distractor)

    written = []
    for index, caption, rounds in dialogs:
        rng = random.Random(f"shapes-world/{seed}/visdial/options/{index}")
        turns = []
        for r, (question, answer) in enumerate(rounds):
            others = [a for a in range(len(answer_pool)) if a != answer]
            options = [answer, *rng.sample(others, min(OPTIONS - 1, len(others)))]
            rng.shuffle(options)
            turn = {"question": question, "answer": answer, "answer_options": options, "gt_index": options.index(answer)}
            if split == "test":
                # The real test file: earlier rounds are history only; the last round is the one to rank.
                last = r == len(rounds) - 1
                turn = {"question": question, "answer_options": options} if last else {"question": question, "answer": answer}
            turns.append(turn)
        written.append({"image_id": visdial_image_id(index), "caption": caption, "dialog": turns})

    path = root / f"visdial_1.0_{split}.json"
    _write_json(path, {"version": "1.0", "split": split,
                       "data": {"questions": question_pool, "answers": answer_pool, "dialogs": written}})
    return {"file": str(path), "dialogs": len(written), "rounds": sum(len(d["dialog"]) for d in written)}


def write_visdial(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 12) -> dict:
    """Write out_dir/data/visdial/{visdial_1.0_{split}.json, train2014/, val2014/, VisualDialog_{val,test}2018/}."""
    root = Path(out_dir) / "data" / "visdial"
    splits = {}
    for number, split in enumerate(SPLITS):
        splits[split] = _write_split(root, seed, split, list(range(number, scenes, len(SPLITS))))
    return {"image_root": str(root), "splits": splits}
