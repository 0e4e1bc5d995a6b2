"""BLIP CapFilt web captions as LAVIS reads them (capfilt14m annotation.json) to canonical captioning records."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_entry, load_annotation_list

DATASET = "web_capfilt"
TASK = "captioning"


def _relative_image_path(image: str, strip_prefix: str | None, root: Path, path: Path, where: str) -> str:
    """The row's image path relative to `root`: `image` without `strip_prefix`, or `image` itself when relative."""
    if strip_prefix is not None:
        prefix = strip_prefix.rstrip("/") + "/"
        if not image.startswith(prefix):
            raise AnnotationError(
                f"{path}: {where}: field 'image' is {image!r}, which does not start with strip_prefix {prefix!r}; "
                "set strip_prefix to the part of the paths that stands for image_root"
            )
        relative = image[len(prefix):]
    elif posixpath.isabs(image):
        # An absolute path that already points into image_root is a file rewritten for this machine.
        root_prefix = root.as_posix().rstrip("/") + "/"
        if not image.startswith(root_prefix):
            raise AnnotationError(
                f"{path}: {where}: field 'image' is the absolute path {image!r}, which is not under image_root {root}; "
                "set strip_prefix to the part of the paths that stands for image_root (e.g. the folder above the source dataset folders)"
            )
        relative = image[len(root_prefix):]
    else:
        relative = image
    relative = posixpath.normpath(relative)
    if relative == "." or relative.startswith("../") or relative == ".." or posixpath.isabs(relative):
        raise AnnotationError(f"{path}: {where}: field 'image' is {image!r}, which leads outside image_root {root}")
    return relative


def read_web_capfilt(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    strip_prefix: str | None = None,
) -> list[dict]:
    """One canonical record per row of a CapFilt annotation file ([{"image", "caption"}]), in file order.

    The published file names each image by an absolute path on the authors'
    machines, which LAVIS opens as it is. Here an image is
    image_root / (image without `strip_prefix`): with strip_prefix
    "/export/share/data/" the row "/export/share/data/cc3m/01.jpg" is
    image_root/cc3m/01.jpg. Without strip_prefix a relative path is taken
    under image_root, and an absolute one only when it already lies under
    image_root; any other absolute path is an AnnotationError that asks for
    strip_prefix. Nothing is guessed from the path (source datasets reuse
    file names, so keeping only the last components could pick the wrong
    image). Sizes are read from the image headers. The file has no ids; the
    record id is the row's index in the file.
    """
    path = Path(annotation_file)
    rows = load_annotation_list(path, "image-caption pairs")
    root = Path(os.path.abspath(image_root))

    records = []
    for index, row in enumerate(rows):
        where = f"[{index}]"
        image = field(row, "image", str, path, where)
        caption = field(row, "caption", str, path, where)
        relative = _relative_image_path(image, strip_prefix, root, path, where)
        named = f"field 'image' is {image!r} (image_root/{relative}; check image_root and strip_prefix)"
        records.append(
            canonical_record(
                TASK, id=record_id(DATASET, split, index), dataset=DATASET, split=split, lang="en",
                image=image_entry(root / relative, path, where, named),
                caption=caption.strip(),
            )
        )
    return records
