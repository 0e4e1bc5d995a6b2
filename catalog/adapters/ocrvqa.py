"""OCR-VQA (dataset.json) to canonical reading-VQA records."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_size, load_annotation_json

DATASET = "ocrvqa"
TASK = "reading_vqa"
SPLIT_CODES = {"train": 1, "val": 2, "test": 3}


def _image_name(key: str, image_url: str) -> str:
    # The official downloader saves each cover as its key plus the extension of its imageURL.
    extension = PurePosixPath(urlparse(image_url).path).suffix.lower()
    return f"{key}{extension or '.jpg'}"


def read_ocrvqa(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    skip_missing_images: bool = False,
) -> list[dict]:
    """One canonical record per (question, answer) pair of the covers in `split`, in file order.

    dataset.json holds every split; `split` ("train", "val" or "test") picks
    the covers whose split code is 1, 2 or 3. `image_root` is the folder the
    covers were downloaded to, each named {key}{extension of imageURL}.
    Record ids are "ocrvqa:{split}:{key}_{n}", n the question's index on its
    cover; answers is the single answer in a list. Some covers can no longer
    be downloaded: a cover without an image is an error unless
    `skip_missing_images`, which leaves its questions out.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"read_ocrvqa: split {split!r}; expected one of {sorted(SPLIT_CODES)}")
    path = Path(annotation_file)
    data = load_annotation_json(path)
    root = Path(os.path.abspath(image_root))

    records = []
    for key, cover in data.items():
        where = f'["{key}"]'
        code = field(cover, "split", int, path, where)
        if code not in SPLIT_CODES.values():
            raise AnnotationError(f"{path}: {where}: field 'split' is {code}; expected 1 (train), 2 (val) or 3 (test)")
        if code != SPLIT_CODES[split]:
            continue
        questions = field(cover, "questions", list, path, where)
        answers = field(cover, "answers", list, path, where)
        if len(questions) != len(answers):
            raise AnnotationError(
                f"{path}: {where}: {len(questions)} questions but {len(answers)} answers; expected one answer per question"
            )
        image_path = root / _image_name(key, field(cover, "imageURL", str, path, where))
        if not image_path.is_file():
            if skip_missing_images:
                continue
            raise AnnotationError(f"{path}: {where}: cover image is not at {image_path}")
        try:
            width, height = image_size(image_path)
        except OSError as error:
            raise AnnotationError(f"{path}: {where}: {image_path} is not a readable image ({error})") from error
        for n, (question, answer) in enumerate(zip(questions, answers)):
            for name, value in (("questions", question), ("answers", answer)):
                if not isinstance(value, str):
                    raise AnnotationError(f"{path}: {where}: {name}[{n}] is {value!r:.60}; expected a string")
            records.append(
                canonical_record(
                    TASK, id=record_id(DATASET, split, f"{key}_{n}"), dataset=DATASET, split=split, lang="en",
                    image={"path": str(image_path), "width": width, "height": height},
                    question=question,
                    answer=answer,
                    answers=[answer],
                )
            )
    return records
