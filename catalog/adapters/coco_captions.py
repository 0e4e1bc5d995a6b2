"""COCO Captions (captions_*.json) to canonical captioning records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, load_annotation_json

DATASET = "coco_caption"
TASK = "captioning"


def read_coco_images(path: Path, data: dict, image_root: str | os.PathLike) -> dict[int, dict]:
    """image id -> {"path" (absolute), "width", "height"} from a COCO file's "images" list."""
    root = Path(os.path.abspath(image_root))
    images: dict[int, dict] = {}
    for index, image in enumerate(field(data, "images", list, path, "top level")):
        where = f"images[{index}]"
        image_id = field(image, "id", int, path, where)
        if image_id in images:
            raise AnnotationError(f"{path}: {where}: image id {image_id} appears twice in 'images'")
        images[image_id] = {
            "path": str(root / field(image, "file_name", str, path, where)),
            "width": field(image, "width", int, path, where),
            "height": field(image, "height", int, path, where),
        }
    return images


def read_coco_captions(annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """One canonical record per caption of a COCO Captions file, in file order.

    `image_root` is the folder holding the file's images (e.g. coco/train2014);
    image paths in the records are absolute. Captions lose surrounding
    whitespace (the official files end some with " \\n") and nothing else.
    """
    path = Path(annotation_file)
    data = load_annotation_json(path)
    images = read_coco_images(path, data, image_root)
    records = []
    for index, annotation in enumerate(field(data, "annotations", list, path, "top level")):
        where = f"annotations[{index}]"
        annotation_id = field(annotation, "id", int, path, where)
        image_id = field(annotation, "image_id", int, path, where)
        caption = field(annotation, "caption", str, path, where)
        if image_id not in images:
            raise AnnotationError(f"{path}: {where}: image_id {image_id} is not in 'images'")
        records.append(
            canonical_record(
                TASK, id=record_id(DATASET, split, annotation_id), dataset=DATASET, split=split, lang="en",
                image=dict(images[image_id]),
                caption=caption.strip(),
            )
        )
    return records
