"""nocaps (nocaps_val_4500_captions.json, nocaps_test_image_info.json) to canonical captioning records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, load_annotation_json

DATASET = "nocaps"
TASK = "captioning"
# How far an image's objects are from COCO's classes; nocaps reports CIDEr per domain.
DOMAINS = ("in-domain", "near-domain", "out-domain")


def _read_images(path: Path, data: dict, root: Path) -> dict[int, dict]:
    """image id -> {"image", "domain"} from the file's "images" list; every image must be on disk."""
    images: dict[int, dict] = {}
    entries = field(data, "images", list, path, "top level")
    has_domain = bool(entries) and isinstance(entries[0], dict) and "domain" in entries[0]
    for index, entry in enumerate(entries):
        where = f"images[{index}]"
        image_id = field(entry, "id", int, path, where)
        if image_id in images:
            raise AnnotationError(f"{path}: {where}: image id {image_id} appears twice in 'images'")
        file_name = field(entry, "file_name", str, path, where)
        image_path = root / file_name
        if not image_path.is_file():
            raise AnnotationError(f"{path}: {where}: field 'file_name' names {file_name!r}, but there is no image at {image_path}")
        domain = None
        if has_domain:
            domain = field(entry, "domain", str, path, where)
            if domain not in DOMAINS:
                raise AnnotationError(f"{path}: {where}: field 'domain' is {domain!r}; expected one of {', '.join(DOMAINS)}")
        images[image_id] = {
            "image": {
                "path": str(image_path),
                "width": field(entry, "width", int, path, where),
                "height": field(entry, "height", int, path, where),
            },
            "domain": domain,
        }
    return images


def _record(split: str, native_id: int, image: dict, caption: str | None, answers: list[str] | None) -> dict:
    return canonical_record(
        TASK, id=record_id(DATASET, split, native_id), dataset=DATASET, split=split, lang="en",
        image=dict(image["image"]),
        caption=caption,
        answers=answers,
        domain=image["domain"],
    )


def read_nocaps(annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """Canonical records of a nocaps file: one per caption (val), or one per image when there are none (test).

    `image_root` holds the split's images under their file_name
    ({open_images_id}.jpg), as LAVIS's download script saves them (nocaps/val,
    nocaps/test). Each val record carries its caption and, in `answers`, all
    reference captions of its image in file order (for CIDEr); captions lose
    surrounding whitespace. The record id is the annotation id (val) or the
    image id (test). `domain` is the image's in-domain / near-domain /
    out-domain label; None for every image when the first has no 'domain'.
    A file without 'annotations' (nocaps_test_image_info.json) gives caption
    and answers None.
    """
    path = Path(annotation_file)
    data = load_annotation_json(path)
    images = _read_images(path, data, Path(os.path.abspath(image_root)))
    if "annotations" not in data:
        return [_record(split, image_id, image, None, None) for image_id, image in images.items()]

    rows = []
    references: dict[int, list[str]] = {}
    for index, annotation in enumerate(field(data, "annotations", list, path, "top level")):
        where = f"annotations[{index}]"
        annotation_id = field(annotation, "id", int, path, where)
        image_id = field(annotation, "image_id", int, path, where)
        caption = field(annotation, "caption", str, path, where).strip()
        if image_id not in images:
            raise AnnotationError(f"{path}: {where}: image_id {image_id} is not in 'images'")
        rows.append((annotation_id, image_id, caption))
        references.setdefault(image_id, []).append(caption)
    return [
        _record(split, annotation_id, images[image_id], caption, list(references[image_id]))
        for annotation_id, image_id, caption in rows
    ]
