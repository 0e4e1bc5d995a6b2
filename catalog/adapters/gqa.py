"""GQA balanced questions ({split}_balanced_questions.json) to canonical visual-reasoning records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_size, load_annotation_json

DATASET = "gqa"
TASK = "visual_reasoning"


def read_gqa(questions_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """One canonical record per question of a GQA questions file, in file order.

    The file is a dict keyed by question id; `image_root` is the folder of
    images/{imageId}.jpg. question_type is types.detailed (e.g. "relVerify"),
    or types.structural when detailed is empty; full_answer is fullAnswer.
    The test and challenge files give each question only imageId, question
    and isBalanced: when the first question has no 'answer', answer, answers
    and full_answer are None for all, and when it has no 'types',
    question_type is None for all. Otherwise every question must have them.
    """
    path = Path(questions_file)
    data = load_annotation_json(path)
    root = Path(os.path.abspath(image_root))
    first = next(iter(data.values()), {})
    has_answers = not data or "answer" in first
    has_types = not data or "types" in first

    images: dict[str, dict] = {}
    records = []
    for question_id, question in data.items():
        where = f'["{question_id}"]'
        image_id = field(question, "imageId", str, path, where)
        text = field(question, "question", str, path, where)
        question_type = _question_type(question, path, where) if has_types else None
        if image_id not in images:
            image_path = root / f"{image_id}.jpg"
            if not image_path.is_file():
                raise AnnotationError(f"{path}: {where}: imageId {image_id!r} has no image at {image_path}")
            try:
                width, height = image_size(image_path)
            except OSError as error:
                raise AnnotationError(f"{path}: {where}: imageId {image_id!r}: {image_path} is not a readable image ({error})") from error
            images[image_id] = {"path": str(image_path), "width": width, "height": height}

        answer = field(question, "answer", str, path, where) if has_answers else None
        records.append(
            canonical_record(
                TASK, id=record_id(DATASET, split, question_id), dataset=DATASET, split=split, lang="en",
                image=dict(images[image_id]),
                question=text,
                answer=answer,
                answers=[answer] if has_answers else None,
                question_type=question_type,
                full_answer=field(question, "fullAnswer", str, path, where) if has_answers else None,
            )
        )
    return records


def _question_type(question: dict, path: Path, where: str) -> str:
    """types.detailed, or types.structural when detailed is empty."""
    types = field(question, "types", dict, path, where)
    question_type = types.get("detailed") or field(types, "structural", str, path, f"{where}.types")
    if not isinstance(question_type, str):
        raise AnnotationError(f"{path}: {where}.types: field 'detailed' is {question_type!r:.60}; expected a string")
    return question_type
