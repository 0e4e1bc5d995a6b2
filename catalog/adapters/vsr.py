"""VSR, Visual Spatial Reasoning (data/splits/zeroshot/{train,dev,test}.jsonl), to canonical true/false records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_size, load_annotation_jsonl

DATASET = "vsr"
TASK = "visual_reasoning"
ANSWERS = {0: "false", 1: "true"}


def _image_path(root: Path, image_name: str, row: dict) -> Path | None:
    """The image under root, or under root/<train2017|val2017> as its image_link says; None if neither exists."""
    candidates = [root / image_name]
    link = row.get("image_link")
    if isinstance(link, str) and "/" in link:
        # image_link is e.g. http://images.cocodataset.org/train2017/000000017697.jpg
        candidates.append(root / link.rstrip("/").split("/")[-2] / image_name)
    return next((path for path in candidates if path.is_file()), None)


def read_vsr(annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """One canonical record per statement of a VSR JSONL file, in file order.

    `caption` is the statement about the image and `answer` "true" (label 1)
    or "false" (label 0); turning it into a question is the template's job.
    VSR lines have no id, so a record's native id is its line number.
    `image_root` is a flat folder of the COCO 2017 images (vsr_images.zip),
    or one holding train2017/ and val2017/, found through `image_link`.
    """
    path = Path(annotation_file)
    root = Path(os.path.abspath(image_root))
    images: dict[Path, tuple[int, int]] = {}
    records = []
    for number, row in load_annotation_jsonl(path):
        where = f"line {number}"
        image_name = field(row, "image", str, path, where)
        caption = field(row, "caption", str, path, where)
        label = field(row, "label", int, path, where)
        if label not in ANSWERS:
            raise AnnotationError(f"{path}: {where}: field 'label' is {label}; expected 1 (true) or 0 (false)")
        relation = field(row, "relation", str, path, where)
        image_path = _image_path(root, image_name, row)
        if image_path is None:
            raise AnnotationError(f"{path}: {where}: field 'image' names {image_name!r}, but there is no image under {root}")
        if image_path not in images:
            try:
                images[image_path] = image_size(image_path)
            except OSError as error:
                raise AnnotationError(f"{path}: {where}: {image_path} is not a readable image ({error})") from error
        width, height = images[image_path]
        records.append(
            canonical_record(
                TASK, id=record_id(DATASET, split, number), dataset=DATASET, split=split, lang="en",
                image={"path": str(image_path), "width": width, "height": height},
                caption=caption.strip(),
                label=label,
                answer=ANSWERS[label],
                relation=relation,
                # subj/obj are in the current files but not in the README's example.
                subj=row.get("subj"),
                obj=row.get("obj"),
            )
        )
    return records
