"""VQAv2 (questions + annotations JSON) to canonical VQA records."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import columns, decode_typed, field, first_repeat, image_entry, load_annotation_json, strings_of_each

DATASET = "vqav2"
TASK = "vqa"
DEFAULT_IMAGE_NAME = "COCO_{subtype}_{image_id:012d}.jpg"
# The COCO image set of a questions file's data_subtype where the two differ: test-dev is a subset of
# the test questions, on the test2015 images (test2015/COCO_test2015_<id>.jpg; there is no test-dev folder).
IMAGE_SUBTYPE = {"test-dev2015": "test2015"}


# What a reader takes from an annotations file: question_id -> row index, and per row the columns
# image_id, answer, answers, answer_type, question_type.
Answers = tuple[dict[int, int], dict[str, list]]
ANSWER_COLUMNS = ("answer", "answers", "answer_type", "question_type")


def answer_rows(path: Path, question_ids: list[int]) -> dict[int, int]:
    """question_id -> row index of an annotations file; a question annotated twice names its row."""
    repeat = first_repeat(question_ids)
    if repeat is not None:
        raise AnnotationError(f"{path}: annotations[{repeat}]: question_id {question_ids[repeat]} is annotated twice")
    return dict(zip(question_ids, range(len(question_ids))))


# The fields read, as typed structs: a file that fits decodes in one C pass (see decode_typed)
class _Answer(msgspec.Struct, gc=False):
    answer: str


class _Annotation(msgspec.Struct, gc=False):
    question_id: int
    image_id: int
    multiple_choice_answer: str
    answers: list[_Answer]
    answer_type: str
    question_type: str


class _AnnotationsFile(msgspec.Struct, gc=False):
    annotations: list[_Annotation]


class _Question(msgspec.Struct, gc=False):
    question_id: int
    image_id: int
    question: str


class _QuestionsFile(msgspec.Struct, gc=False):
    questions: list[_Question]
    data_subtype: str | None = None


def _read_answers(path: Path) -> Answers:
    typed = decode_typed(path, _AnnotationsFile)
    if typed is not None:
        rows = typed.annotations
        return answer_rows(path, [row.question_id for row in rows]), {
            "image_id": [row.image_id for row in rows],
            "answer": [row.multiple_choice_answer for row in rows],
            "answers": [[answer.answer for answer in row.answers] for row in rows],
            "answer_type": [row.answer_type for row in rows],
            "question_type": [row.question_type for row in rows],
        }
    data = load_annotation_json(path)
    rows = columns(field(data, "annotations", list, path, "top level"),
                   {"question_id": int, "answers": list, "image_id": int, "multiple_choice_answer": str,
                    "answer_type": str, "question_type": str}, path, "annotations")
    rows["answers"] = strings_of_each(rows["answers"], "answer", path, "annotations[{}].answers")
    rows["answer"] = rows.pop("multiple_choice_answer")
    return answer_rows(path, rows.pop("question_id")), rows


def read_vqav2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_root: str | os.PathLike,
    split: str,
    image_name: str = DEFAULT_IMAGE_NAME,
) -> list[dict]:
    """One canonical record per question, in question-file order.

    `image_name` names an image file under `image_root` from `{subtype}` (the
    COCO image set of the questions file's data_subtype, e.g. train2014;
    test2015 for test-dev2015, whose images are the test set's), `{image_id}`
    and `{split}`.
    Without an annotations file (the test splits) answer, answers,
    answer_type and question_type are None. Every question's image must exist:
    its width and height are read from it.
    """
    answers_path = Path(annotations_file) if annotations_file is not None else None
    answers = _read_answers(answers_path) if answers_path is not None else None
    return join_questions(Path(questions_file), answers, answers_path, image_root, split, image_name, DATASET, TASK)


def join_questions(
    questions_path: Path,
    answers: Answers | None,
    answers_path: Path | None,
    image_root: str | os.PathLike,
    split: str,
    image_name: str,
    dataset: str,
    task: str,
) -> list[dict]:
    """Records of a questions file in the VQA layout (VQAv2, OK-VQA), joined on question_id with the
    answers its dataset's reader took from the annotations file; every question must be answered once
    and every answer asked."""
    typed = decode_typed(questions_path, _QuestionsFile)
    if typed is not None:
        rows = typed.questions
        subtype = typed.data_subtype
        questions = {"question_id": [row.question_id for row in rows], "image_id": [row.image_id for row in rows],
                     "question": [row.question for row in rows]}
    else:
        data = load_annotation_json(questions_path)
        subtype = data.get("data_subtype")
        questions = columns(field(data, "questions", list, questions_path, "top level"),
                            {"question_id": int, "image_id": int, "question": str}, questions_path, "questions")
    question_ids, image_ids = questions["question_id"], questions["image_id"]
    repeat = first_repeat(question_ids)
    if repeat is not None:
        raise AnnotationError(f"{questions_path}: questions[{repeat}]: question_id {question_ids[repeat]} appears twice")
    if subtype is None and "{subtype" in image_name:
        raise AnnotationError(
            f"{questions_path}: top level: missing field 'data_subtype' (needed to name images by {image_name!r})"
        )
    subtype = IMAGE_SUBTYPE.get(subtype, subtype)
    root = Path(os.path.abspath(image_root))
    images: dict[int, dict] = {}
    for index, image_id in enumerate(image_ids):
        if image_id not in images:
            images[image_id] = image_entry(root / image_name.format(subtype=subtype, image_id=image_id, split=split),
                                           questions_path, f"questions[{index}]", f"image_id {image_id}")
    if answers is None:
        answer_columns = [[None] * len(question_ids)] * len(ANSWER_COLUMNS)
    else:
        rows = _answer_rows_of(questions_path, question_ids, image_ids, answers, answers_path)
        answer_columns = [[answers[1][name][row] for row in rows] for name in ANSWER_COLUMNS]
    return [
        canonical_record(task, id=record_id(dataset, split, question_id), dataset=dataset, split=split, lang="en",
                         image=dict(images[image_id]), question=text, answer=answer, answers=human_answers,
                         answer_type=answer_type, question_type=question_type)
        for question_id, image_id, text, answer, human_answers, answer_type, question_type
        in zip(question_ids, image_ids, questions["question"], *answer_columns)
    ]


def _answer_rows_of(questions_path: Path, question_ids: list[int], image_ids: list[int], answers: Answers,
                    answers_path: Path) -> list[int]:
    """The annotations row of every question, each checked to be of the question's image."""
    row_of, answer_columns = answers
    rows = [row_of.get(question_id) for question_id in question_ids]
    if None in rows:
        index = rows.index(None)
        raise AnnotationError(f"{answers_path}: no annotation for question_id {question_ids[index]} "
                              f"({questions_path.name} questions[{index}])")
    answer_images = answer_columns["image_id"]
    if [answer_images[row] for row in rows] != image_ids:
        index = next(i for i, row in enumerate(rows) if answer_images[row] != image_ids[i])
        raise AnnotationError(
            f"{answers_path}: annotations[{rows[index]}]: image_id {answer_images[rows[index]]} differs from "
            f"image_id {image_ids[index]} of question_id {question_ids[index]} in {questions_path.name}")
    if len(rows) != len(row_of):
        asked = set(question_ids)
        question_id, row = min(((q, r) for q, r in row_of.items() if q not in asked), key=lambda item: item[1])
        raise AnnotationError(f"{answers_path}: annotations[{row}]: question_id {question_id} is not in {questions_path}")
    return rows
