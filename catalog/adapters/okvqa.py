"""OK-VQA (VQA v1 layout: questions + annotations JSON) to canonical knowledge-VQA records."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from . import AnnotationError
from .fields import columns, field, load_annotation_json
from .vqav2 import DEFAULT_IMAGE_NAME, Answers, answer_rows, join_questions

DATASET = "okvqa"
TASK = "knowledge_vqa"


def most_common_answer(human_answers: list[str], tie_break: str | None = None) -> str:
    """The answer given most often; a tie goes to `tie_break` if it is one of the tied, else to the first given.

    OK-VQA's five annotators' answers are each written twice, so ties are
    common ("apple" x2, "cherry" x2, ...); file order keeps the choice stable.
    """
    counts = Counter(human_answers)
    top = max(counts.values())
    tied = [answer for answer in counts if counts[answer] == top]
    return tie_break if tie_break in tied else tied[0]


def _optional(row: dict, name: str, kind: type, path: Path, where: str):
    """row[name] checked to be of `kind`, or None when the field is absent."""
    return field(row, name, kind, path, where) if name in row else None


def _read_answers(path: Path) -> Answers:
    """The answers of an OK-VQA annotations file, in the layout join_questions takes."""
    data = load_annotation_json(path)
    annotations = field(data, "annotations", list, path, "top level")
    rows = columns(annotations, {"question_id": int, "answers": list, "image_id": int}, path, "annotations")
    answer_lists = rows.pop("answers")
    rows.update(answer=[], answers=[], answer_type=[], question_type=[])
    for index, (annotation, answer_list) in enumerate(zip(annotations, answer_lists)):
        where = f"annotations[{index}]"
        human_answers = []
        for n, answer in enumerate(answer_list):
            human_answers.append(field(answer, "answer", str, path, f"{where}.answers[{n}]"))
            # v1.1 keeps the unprocessed text beside the processed one; only its type is checked.
            _optional(answer, "raw_answer", str, path, f"{where}.answers[{n}]")
        if not human_answers:
            raise AnnotationError(f"{path}: {where}: field 'answers' is empty; expected the human answers")
        # Some releases carry VQA's multiple_choice_answer and some do not: the
        # answer to train on is the most common human answer either way, and
        # multiple_choice_answer, where present, only settles a tie.
        official = _optional(annotation, "multiple_choice_answer", str, path, where)
        rows["answer"].append(most_common_answer(human_answers, official))
        rows["answers"].append(human_answers)
        rows["answer_type"].append(_optional(annotation, "answer_type", str, path, where))
        rows["question_type"].append(_optional(annotation, "question_type", str, path, where))
    return answer_rows(path, rows.pop("question_id")), rows


def read_okvqa(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_root: str | os.PathLike,
    split: str,
    image_name: str = DEFAULT_IMAGE_NAME,
) -> list[dict]:
    """One canonical knowledge-VQA record per question, in question-file order.

    `image_root` is the folder holding the split's COCO 2014 images (e.g.
    coco/train2014); `image_name` names a file there from `{subtype}` (the
    questions file's data_subtype), `{image_id}` and `{split}`. `answer` is
    the most common of the ten human answers (see `most_common_answer`) and
    `answers` all of them. Without an annotations file answer, answers,
    answer_type and question_type are None. Every question's image must exist:
    its width and height are read from it.
    """
    answers_path = Path(annotations_file) if annotations_file is not None else None
    answers = _read_answers(answers_path) if answers_path is not None else None
    return join_questions(Path(questions_file), answers, answers_path, image_root, split, image_name, DATASET, TASK)
