"""TextVQA 0.5.1 (TextVQA_0.5.1_{split}.json, optionally + Rosetta OCR) to canonical reading-VQA records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, load_annotation_json, most_common_answer, string_list

DATASET = "textvqa"
TASK = "reading_vqa"


def read_ocr_tokens(path: Path) -> dict[str, list[str]]:
    """image_id -> ocr_tokens from a Rosetta OCR file ({"data": [{"image_id", "ocr_tokens", ...}]})."""
    data = load_annotation_json(path)
    tokens: dict[str, list[str]] = {}
    for index, entry in enumerate(field(data, "data", list, path, "top level")):
        where = f"data[{index}]"
        image_id = field(entry, "image_id", str, path, where)
        if image_id in tokens:
            raise AnnotationError(f"{path}: {where}: image_id {image_id!r} has OCR tokens twice")
        entry_tokens = string_list(entry, "ocr_tokens", path, where)
        tokens[image_id] = list(entry_tokens)
    return tokens


def row_image(row: dict, image_id: str, root: Path, checked: set[str], path: Path, where: str) -> dict:
    """A TextVQA / TextCaps row's image, {image_id}.jpg under `root`, with the sizes the row gives;
    the file must exist (looked for once per image, `checked` remembers)."""
    width = field(row, "image_width", int, path, where)
    height = field(row, "image_height", int, path, where)
    image_path = root / f"{image_id}.jpg"
    if image_id not in checked:
        if not image_path.is_file():
            raise AnnotationError(f"{path}: {where}: image_id {image_id!r} has no image at {image_path}")
        checked.add(image_id)
    return {"path": str(image_path), "width": width, "height": height}


def ocr_of(ocr_tokens: dict[str, list[str]] | None, image_id: str, ocr_path: Path | None, path: Path,
           where: str) -> list[str] | None:
    """An image's OCR tokens from a Rosetta OCR file read by read_ocr_tokens (None without one); an image
    the OCR file lacks names both files."""
    if ocr_tokens is None:
        return None
    if image_id not in ocr_tokens:
        raise AnnotationError(f"{ocr_path}: no OCR entry for image_id {image_id!r} ({path.name} {where})")
    return list(ocr_tokens[image_id])


def read_textvqa(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    ocr_file: str | os.PathLike | None = None,
) -> list[dict]:
    """One canonical record per question of a TextVQA file, in file order.

    `image_root` holds {image_id}.jpg (train_images for train and val,
    test_images for test); sizes come from image_width / image_height.
    answer is the most common of the ten answers (a tie goes to the one given
    first). With `ocr_file` (TextVQA_Rosetta_OCR_v0.2_{split}.json) each record
    carries all of its image's ocr_tokens, in OCR order; every question's
    image must have an OCR entry. Without it ocr_tokens is None. When the
    first question has no 'answers' (the test file), answer and answers are
    None for every question.
    """
    path = Path(annotation_file)
    data = load_annotation_json(path)
    questions = field(data, "data", list, path, "top level")
    root = Path(os.path.abspath(image_root))
    ocr_path = Path(ocr_file) if ocr_file is not None else None
    ocr_tokens = read_ocr_tokens(ocr_path) if ocr_path is not None else None
    has_answers = bool(questions) and isinstance(questions[0], dict) and "answers" in questions[0]

    seen_images: set[str] = set()
    records = []
    for index, question in enumerate(questions):
        where = f"data[{index}]"
        question_id = field(question, "question_id", int, path, where)
        image_id = field(question, "image_id", str, path, where)
        text = field(question, "question", str, path, where)
        image = row_image(question, image_id, root, seen_images, path, where)
        answers = None  # the test split: questions without answers
        if has_answers:
            answers = list(string_list(question, "answers", path, where))
            if not answers:
                raise AnnotationError(f"{path}: {where}: field 'answers' is an empty list; expected the human answers")
        records.append(canonical_record(
            TASK, id=record_id(DATASET, split, question_id), dataset=DATASET, split=split, lang="en", image=image,
            question=text, answer=most_common_answer(answers) if answers else None, answers=answers,
            ocr_tokens=ocr_of(ocr_tokens, image_id, ocr_path, path, where),
        ))
    return records
