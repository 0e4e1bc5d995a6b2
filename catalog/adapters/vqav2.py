"""VQAv2 (questions + annotations JSON) to canonical VQA records."""

from __future__ import annotations

import os
from pathlib import Path

from . import AnnotationError
from .fields import field, image_size, load_annotation_json, strings_of

DATASET = "vqav2"
TASK = "vqa"
DEFAULT_IMAGE_NAME = "COCO_{subtype}_{image_id:012d}.jpg"


def _read_answers(path: Path) -> dict[int, tuple[int, dict]]:
    """question_id -> (row index, answer fields) from an annotations file."""
    data = load_annotation_json(path)
    answers: dict[int, tuple[int, dict]] = {}
    for index, annotation in enumerate(field(data, "annotations", list, path, "top level")):
        where = f"annotations[{index}]"
        question_id = field(annotation, "question_id", int, path, where)
        if question_id in answers:
            raise AnnotationError(f"{path}: {where}: question_id {question_id} is annotated twice")
        human_answers = strings_of(field(annotation, "answers", list, path, where), "answer", path, f"{where}.answers")
        answers[question_id] = (
            index,
            {
                "image_id": field(annotation, "image_id", int, path, where),
                "answer": field(annotation, "multiple_choice_answer", str, path, where),
                "answers": human_answers,
                "answer_type": field(annotation, "answer_type", str, path, where),
                "question_type": field(annotation, "question_type", str, path, where),
            },
        )
    return answers


def read_vqav2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_root: str | os.PathLike,
    split: str,
    image_name: str = DEFAULT_IMAGE_NAME,
) -> list[dict]:
    """One canonical record per question, in question-file order.

    `image_name` names an image file under `image_root` from `{subtype}` (the
    questions file's data_subtype, e.g. train2014), `{image_id}` and `{split}`.
    Without an annotations file (the test splits) answer, answers,
    answer_type and question_type are None. Every question's image must exist:
    its width and height are read from it.
    """
    answers_path = Path(annotations_file) if annotations_file is not None else None
    answers = _read_answers(answers_path) if answers_path is not None else None
    return join_questions(Path(questions_file), answers, answers_path, image_root, split, image_name, DATASET, TASK)


def join_questions(
    questions_path: Path,
    answers: dict[int, tuple[int, dict]] | None,
    answers_path: Path | None,
    image_root: str | os.PathLike,
    split: str,
    image_name: str,
    dataset: str,
    task: str,
) -> list[dict]:
    """Records of a questions file in the VQA layout (VQAv2, OK-VQA), joined on question_id with the
    answers its dataset's reader took from the annotations file (question_id -> (row, answer fields,
    image_id among them)); every question must be answered once and every answer asked."""
    data = load_annotation_json(questions_path)
    questions = field(data, "questions", list, questions_path, "top level")
    subtype = data.get("data_subtype")
    if subtype is None and "{subtype" in image_name:
        raise AnnotationError(
            f"{questions_path}: top level: missing field 'data_subtype' (needed to name images by {image_name!r})"
        )
    root = Path(os.path.abspath(image_root))
    images: dict[int, dict] = {}
    seen: set[int] = set()
    records = []
    for index, question in enumerate(questions):
        where = f"questions[{index}]"
        question_id = field(question, "question_id", int, questions_path, where)
        image_id = field(question, "image_id", int, questions_path, where)
        text = field(question, "question", str, questions_path, where)
        if question_id in seen:
            raise AnnotationError(f"{questions_path}: {where}: question_id {question_id} appears twice")
        seen.add(question_id)
        if image_id not in images:
            image_path = root / image_name.format(subtype=subtype, image_id=image_id, split=split)
            if not image_path.is_file():
                raise AnnotationError(f"{questions_path}: {where}: image_id {image_id} has no image at {image_path}")
            try:
                width, height = image_size(image_path)
            except OSError as error:
                raise AnnotationError(
                    f"{questions_path}: {where}: image_id {image_id}: {image_path} is not a readable image ({error})"
                ) from error
            images[image_id] = {"path": str(image_path), "width": width, "height": height}

        record = {
            "id": f"{dataset}:{split}:{question_id}",
            "dataset": dataset,
            "task": task,
            "split": split,
            "lang": "en",
            "image": dict(images[image_id]),
            "question": text,
            "answer": None,
            "answers": None,
            "answer_type": None,
            "question_type": None,
        }
        if answers is not None:
            if question_id not in answers:
                raise AnnotationError(
                    f"{answers_path}: no annotation for question_id {question_id} ({questions_path.name} {where})"
                )
            answer_index, answer = answers.pop(question_id)
            if answer["image_id"] != image_id:
                raise AnnotationError(
                    f"{answers_path}: annotations[{answer_index}]: image_id {answer['image_id']} differs from "
                    f"image_id {image_id} of question_id {question_id} in {questions_path.name}"
                )
            record.update({k: v for k, v in answer.items() if k != "image_id"})
        records.append(record)

    if answers:
        question_id, (answer_index, _) = min(answers.items(), key=lambda item: item[1][0])
        raise AnnotationError(
            f"{answers_path}: annotations[{answer_index}]: question_id {question_id} is not in {questions_path}"
        )
    return records
