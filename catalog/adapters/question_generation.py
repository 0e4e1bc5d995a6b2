"""Image question generation (VQG) records, built by turning a VQA dataset's own records around.

There is no VQG release: an example shows the image and an answer, and the
target is the question that answer belongs to. Each vqg_* card names one of
the thin readers below, which take the same arguments as its source reader.
"""

from __future__ import annotations

import os

from ..records import canonical_record, record_id
from .aokvqa import DEFAULT_IMAGE_NAME as AOKVQA_IMAGE_NAME
from .aokvqa import read_aokvqa
from .okvqa import DEFAULT_IMAGE_NAME as OKVQA_IMAGE_NAME
from .okvqa import read_okvqa
from .vqav2 import DEFAULT_IMAGE_NAME as VQAV2_IMAGE_NAME
from .vqav2 import read_vqav2

TASK = "question_generation"


def read_question_generation(source_records: list[dict], dataset: str) -> list[dict]:
    """One question-generation record per answered source VQA record, in source order.

    `dataset` is the vqg card's name (e.g. "vqg_okvqa"); ids read
    "<dataset>:<split>:<source native id>". `answer` is the source record's
    answer (the one it trains on: VQAv2's multiple_choice_answer, OK-VQA's
    most common human answer, A-OKVQA's correct choice) and is what the
    prompt gives; `question` is the target to generate. Records with no
    answer (test splits, or a questions file read without its annotations)
    cannot become examples and are skipped, so such a split yields [].
    """
    records = []
    for index, source in enumerate(source_records):
        for name in ("id", "dataset", "split", "image", "question", "answer"):
            if name not in source:
                raise ValueError(f"source_records[{index}]: missing field {name!r}; expected a canonical VQA record")
        if source["answer"] is None:
            continue
        prefix = f"{source['dataset']}:{source['split']}:"
        if not source["id"].startswith(prefix):
            raise ValueError(
                f"source_records[{index}]: id {source['id']!r} does not start with {prefix!r} (dataset:split:)"
            )
        native_id = source["id"][len(prefix):]
        records.append(canonical_record(
            TASK, id=record_id(dataset, source["split"], native_id), dataset=dataset, split=source["split"],
            lang=source.get("lang", "en"), image=dict(source["image"]), answer=source["answer"],
            question=source["question"], source_id=source["id"],
        ))
    return records


def read_vqg_vqav2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_root: str | os.PathLike,
    split: str,
    image_name: str = VQAV2_IMAGE_NAME,
) -> list[dict]:
    """vqg_vqav2 records from the VQAv2 files (arguments as catalog.adapters.vqav2.read_vqav2)."""
    source = read_vqav2(questions_file, annotations_file, image_root, split, image_name=image_name)
    return read_question_generation(source, "vqg_vqav2")


def read_vqg_okvqa(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_root: str | os.PathLike,
    split: str,
    image_name: str = OKVQA_IMAGE_NAME,
) -> list[dict]:
    """vqg_okvqa records from the OK-VQA files (arguments as catalog.adapters.okvqa.read_okvqa)."""
    source = read_okvqa(questions_file, annotations_file, image_root, split, image_name=image_name)
    return read_question_generation(source, "vqg_okvqa")


def read_vqg_aokvqa(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    image_name: str = AOKVQA_IMAGE_NAME,
) -> list[dict]:
    """vqg_aokvqa records from an A-OKVQA file (arguments as catalog.adapters.aokvqa.read_aokvqa).

    The prompt's answer is the correct choice; the test file has none, so it yields [].
    """
    source = read_aokvqa(annotation_file, image_root, split, image_name=image_name)
    return read_question_generation(source, "vqg_aokvqa")
