"""TextCaps 0.1 (TextCaps_0.1_{split}.json, optionally + TextVQA Rosetta OCR) to canonical captioning-reading records."""

from __future__ import annotations

import os
from pathlib import Path

from . import AnnotationError
from .fields import field, load_annotation_json
# TextCaps ships no OCR of its own: it shares TextVQA's images and Rosetta OCR files, so it shares their reader.
from .textvqa import read_ocr_tokens

DATASET = "textcaps"
TASK = "captioning_reading"


def _strings(row: dict, name: str, path: Path, where: str) -> list[str]:
    values = field(row, name, list, path, where)
    for n, value in enumerate(values):
        if not isinstance(value, str):
            raise AnnotationError(f"{path}: {where}: {name}[{n}] is {value!r:.60}; expected a string")
    return list(values)


def read_textcaps(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    ocr_file: str | os.PathLike | None = None,
) -> list[dict]:
    """One canonical record per row of a TextCaps file ("data"), in file order.

    Rows of the train and val files are one caption each: caption is
    caption_str, answers is reference_strs (all captions of the image) and
    the record id is caption_id. The test file has one row per image and no
    captions (decided by the first row having no 'caption_str'): caption and
    answers are None and the id is the image_id. `image_root` holds
    {image_id}.jpg (TextVQA's train_images for train and val, test_images for
    test); sizes come from image_width / image_height. With `ocr_file`
    (TextVQA_Rosetta_OCR_v0.2_{split}.json) each record carries its image's
    ocr_tokens; every image must have an OCR entry. Without it ocr_tokens is None.
    """
    path = Path(annotation_file)
    data = load_annotation_json(path)
    rows = field(data, "data", list, path, "top level")
    root = Path(os.path.abspath(image_root))
    ocr_path = Path(ocr_file) if ocr_file is not None else None
    ocr_tokens = read_ocr_tokens(ocr_path) if ocr_path is not None else None
    has_captions = bool(rows) and isinstance(rows[0], dict) and "caption_str" in rows[0]

    seen_images: set[str] = set()
    records = []
    for index, row in enumerate(rows):
        where = f"data[{index}]"
        image_id = field(row, "image_id", str, path, where)
        width = field(row, "image_width", int, path, where)
        height = field(row, "image_height", int, path, where)
        image_path = root / f"{image_id}.jpg"
        if image_id not in seen_images:
            if not image_path.is_file():
                raise AnnotationError(f"{path}: {where}: image_id {image_id!r} has no image at {image_path}")
            seen_images.add(image_id)
        record = {
            "id": f"{DATASET}:{split}:{image_id}",
            "dataset": DATASET,
            "task": TASK,
            "split": split,
            "lang": "en",
            "image": {"path": str(image_path), "width": width, "height": height},
            "caption": None,
            "answers": None,
            "ocr_tokens": None,
        }
        if has_captions:
            caption_id = field(row, "caption_id", int, path, where)
            references = [reference.strip() for reference in _strings(row, "reference_strs", path, where)]
            if not references:
                raise AnnotationError(f"{path}: {where}: field 'reference_strs' is an empty list; expected the image's captions")
            record.update(
                id=f"{DATASET}:{split}:{caption_id}",
                caption=field(row, "caption_str", str, path, where).strip(),
                answers=references,
            )
        if ocr_tokens is not None:
            if image_id not in ocr_tokens:
                raise AnnotationError(f"{ocr_path}: no OCR entry for image_id {image_id!r} ({path.name} {where})")
            record["ocr_tokens"] = list(ocr_tokens[image_id])
        records.append(record)
    return records
