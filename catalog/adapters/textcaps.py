"""TextCaps 0.1 (TextCaps_0.1_{split}.json, optionally + TextVQA Rosetta OCR) to canonical captioning-reading records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, load_annotation_json, string_list
# TextCaps ships no OCR of its own: it shares TextVQA's images and Rosetta OCR files, so it shares their reader.
from .textvqa import ocr_of, read_ocr_tokens, row_image

DATASET = "textcaps"
TASK = "captioning_reading"


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
        image = row_image(row, image_id, root, seen_images, path, where)
        native_id, caption, references = image_id, None, None  # the test split: an image without captions
        if has_captions:
            native_id = field(row, "caption_id", int, path, where)
            references = [reference.strip() for reference in string_list(row, "reference_strs", path, where)]
            if not references:
                raise AnnotationError(f"{path}: {where}: field 'reference_strs' is an empty list; expected the image's captions")
            caption = field(row, "caption_str", str, path, where).strip()
        records.append(canonical_record(
            TASK, id=record_id(DATASET, split, native_id), dataset=DATASET, split=split, lang="en", image=image,
            caption=caption, answers=references, ocr_tokens=ocr_of(ocr_tokens, image_id, ocr_path, path, where),
        ))
    return records
