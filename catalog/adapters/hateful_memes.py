"""Hateful Memes (train/dev_seen/dev_unseen/test_seen/test_unseen.jsonl) to canonical classification records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_entry, load_annotation_jsonl

DATASET = "hateful_memes"
TASK = "classification"
# The answer InstructBLIP ranks for "is this meme hateful?": label 1 is hateful.
ANSWERS = {0: "no", 1: "yes"}


def _meme_id(row: dict, path: Path, where: str) -> str:
    # The official files write ids as JSON integers (img/01235.png has id 1235); some copies write strings.
    if "id" not in row:
        raise AnnotationError(f"{path}: {where}: missing field 'id'")
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise AnnotationError(f"{path}: {where}: field 'id' is {value!r:.60}; expected an integer or a string")
    return str(value)


def read_hateful_memes(annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """One canonical record per meme of a Hateful Memes JSONL file, in file order.

    `image_root` is the dataset root, the folder holding img/: each line's
    `img` ("img/01235.png") is relative to it. `answer` is "yes" for a
    hateful meme (label 1) and "no" otherwise; lines without a label (test
    files may lack them) give label and answer None. Errors name the file
    and the line number.
    """
    path = Path(annotation_file)
    root = Path(os.path.abspath(image_root))
    records = []
    seen: dict[str, int] = {}
    for number, row in load_annotation_jsonl(path):
        where = f"line {number}"
        meme_id = _meme_id(row, path, where)
        if meme_id in seen:
            raise AnnotationError(f"{path}: {where}: id {meme_id} already appears on line {seen[meme_id]}")
        seen[meme_id] = number
        image_name = field(row, "img", str, path, where)
        text = field(row, "text", str, path, where)
        label = None
        if "label" in row:
            label = field(row, "label", int, path, where)
            if label not in ANSWERS:
                raise AnnotationError(f"{path}: {where}: field 'label' is {label}; expected 0 (not hateful) or 1 (hateful)")
        image = image_entry(root / image_name, path, where, f"field 'img' names {image_name!r}")
        records.append(
            canonical_record(
                TASK, id=record_id(DATASET, split, meme_id), dataset=DATASET, split=split, lang="en",
                image=image,
                text=text,
                label=label,
                answer=ANSWERS.get(label),
            )
        )
    return records
