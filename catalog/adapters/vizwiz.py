"""VizWiz VQA (Annotations/{split}.json) to canonical VQA records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_entry, load_annotation_list, most_common_answer

DATASET = "vizwiz"
TASK = "vqa"


def read_vizwiz(annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """One canonical record per question of a VizWiz annotation file, in file order.

    `image_root` is the split's image folder (e.g. vizwiz/val); the `image`
    field is the file name and doubles as the question id. answer is the most
    common of the ten answers; answerable (0/1 in the file) becomes a bool.
    When the first row has no 'answers' (test.json), answer, answers,
    answer_type and answerable are None for every row; otherwise every row
    must have them.
    """
    path = Path(annotation_file)
    rows = load_annotation_list(path, "questions")
    root = Path(os.path.abspath(image_root))
    has_answers = bool(rows) and isinstance(rows[0], dict) and "answers" in rows[0]

    records = []
    for index, row in enumerate(rows):
        where = f"[{index}]"
        image_name = field(row, "image", str, path, where)
        text = field(row, "question", str, path, where)
        image = image_entry(root / image_name, path, where, f"field 'image' names {image_name!r}")

        answered = dict.fromkeys(("answer", "answers", "answer_type", "answerable"))  # None on the test split
        if has_answers:
            answers = [
                field(answer, "answer", str, path, f"{where}.answers[{n}]")
                for n, answer in enumerate(field(row, "answers", list, path, where))
            ]
            if not answers:
                raise AnnotationError(f"{path}: {where}: field 'answers' is an empty list; expected the crowd answers")
            answerable = field(row, "answerable", int, path, where)
            if answerable not in (0, 1):
                raise AnnotationError(f"{path}: {where}: field 'answerable' is {answerable}; expected 0 or 1")
            answered.update(
                answer=most_common_answer(answers),
                answers=answers,
                answer_type=field(row, "answer_type", str, path, where),
                answerable=bool(answerable),
            )
        records.append(canonical_record(
            TASK, id=record_id(DATASET, split, Path(image_name).stem), dataset=DATASET, split=split, lang="en",
            image=image, question=text, **answered,
        ))
    return records
