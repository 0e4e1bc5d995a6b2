"""A-OKVQA v1.0 (aokvqa_v1p0_{split}.json) to canonical knowledge-VQA records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_size, load_annotation_list, string_list

DATASET = "aokvqa"
TASK = "knowledge_vqa"
# allenai/aokvqa's get_coco_path: {coco_dir}/{split}2017/{image_id:012}.jpg,
# where split is the row's own "split" field.
DEFAULT_IMAGE_NAME = "{split}2017/{image_id:012d}.jpg"


def _strings(row: dict, name: str, path: Path, where: str, required: bool) -> list[str] | None:
    """row[name] as a list of strings; None when it is absent and not required."""
    if name not in row and not required:
        return None
    return string_list(row, name, path, where)


def read_aokvqa(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    image_name: str = DEFAULT_IMAGE_NAME,
) -> list[dict]:
    """One canonical knowledge-VQA record per question, in file order.

    `image_root` is the COCO folder that holds train2017/, val2017/ and
    test2017/; `image_name` names an image under it from `{split}` (the row's
    own "split" field, as the official get_coco_path does) and `{image_id}`.
    `choices` are the four options and `answer_index` / `answer` the correct
    one; `answers` are the ten direct answers and `rationales` the
    annotators' explanations; `difficult_direct_answer` is kept because the
    official multiple-choice score leaves those questions out. The test file
    has no correct_choice_idx, direct_answers or rationales: those fields
    are then None (answer too), and the same holds for any row lacking them.
    """
    path = Path(annotation_file)
    rows = load_annotation_list(path, "questions")
    root = Path(os.path.abspath(image_root))

    images: dict[tuple[str, int], dict] = {}
    seen: set[str] = set()
    records = []
    for index, row in enumerate(rows):
        where = f"[{index}]"
        question_id = field(row, "question_id", str, path, where)
        if question_id in seen:
            raise AnnotationError(f"{path}: {where}: question_id {question_id!r} appears twice")
        seen.add(question_id)
        image_id = field(row, "image_id", int, path, where)
        native_split = field(row, "split", str, path, where)
        question = field(row, "question", str, path, where)
        choices = _strings(row, "choices", path, where, required=True)
        if not choices:
            raise AnnotationError(f"{path}: {where}: field 'choices' is empty; expected the answer options")

        answer_index = None
        if "correct_choice_idx" in row:
            answer_index = field(row, "correct_choice_idx", int, path, where)
            if not 0 <= answer_index < len(choices):
                raise AnnotationError(
                    f"{path}: {where}: field 'correct_choice_idx' is {answer_index}; "
                    f"expected 0-{len(choices) - 1} (an index into its {len(choices)} choices)"
                )
        difficult = row.get("difficult_direct_answer")
        if difficult is not None and not isinstance(difficult, bool):
            raise AnnotationError(
                f"{path}: {where}: field 'difficult_direct_answer' is {difficult!r:.60}; expected true or false"
            )

        key = (native_split, image_id)
        if key not in images:
            image_path = root / image_name.format(split=native_split, image_id=image_id)
            if not image_path.is_file():
                raise AnnotationError(f"{path}: {where}: image_id {image_id} has no image at {image_path}")
            try:
                width, height = image_size(image_path)
            except OSError as error:
                raise AnnotationError(
                    f"{path}: {where}: image_id {image_id}: {image_path} is not a readable image ({error})"
                ) from error
            images[key] = {"path": str(image_path), "width": width, "height": height}

        records.append(
            canonical_record(
                TASK, id=record_id(DATASET, split, question_id), dataset=DATASET, split=split, lang="en",
                image=dict(images[key]),
                question=question,
                answer=choices[answer_index] if answer_index is not None else None,
                answers=_strings(row, "direct_answers", path, where, required=False),
                choices=choices,
                answer_index=answer_index,
                rationales=_strings(row, "rationales", path, where, required=False),
                difficult_direct_answer=difficult,
            )
        )
    return records
