"""Flickr30K in Karpathy's split (dataset_flickr30k.json) to canonical captioning records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_entry, load_annotation_json

DATASET = "flickr30k"
TASK = "captioning"
SPLITS = ("train", "val", "test")


def read_flickr30k(annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """One canonical record per sentence of the images in `split` (train, val or test), in file order.

    The Karpathy file holds all three splits; each image says its own in
    'split'. `image_root` is the flickr30k-images folder; sizes are read from
    the image headers (the file has none). caption is the sentence's 'raw'
    text without surrounding whitespace; answers are all raw sentences of the
    image (for CIDEr on the 1K test split). The record id is the sentid.
    """
    if split not in SPLITS:
        raise ValueError(f"read_flickr30k: split {split!r} is not in Karpathy's Flickr30K file; use one of {', '.join(SPLITS)}")
    path = Path(annotation_file)
    data = load_annotation_json(path)
    root = Path(os.path.abspath(image_root))

    records = []
    for index, entry in enumerate(field(data, "images", list, path, "top level")):
        where = f"images[{index}]"
        image_split = field(entry, "split", str, path, where)
        if image_split not in SPLITS:
            raise AnnotationError(f"{path}: {where}: field 'split' is {image_split!r}; expected one of {', '.join(SPLITS)}")
        if image_split != split:
            continue
        imgid = field(entry, "imgid", int, path, where)
        filename = field(entry, "filename", str, path, where)
        sentences = []
        for n, sentence in enumerate(field(entry, "sentences", list, path, where)):
            sentence_where = f"{where}.sentences[{n}]"
            sentence_imgid = field(sentence, "imgid", int, path, sentence_where)
            if sentence_imgid != imgid:
                raise AnnotationError(f"{path}: {sentence_where}: field 'imgid' is {sentence_imgid}, but the image's imgid is {imgid}")
            sentences.append((field(sentence, "sentid", int, path, sentence_where), field(sentence, "raw", str, path, sentence_where).strip()))
        if not sentences:
            raise AnnotationError(f"{path}: {where}: field 'sentences' is an empty list; expected the image's captions")
        image = image_entry(root / filename, path, where, f"field 'filename' names {filename!r}")
        references = [raw for _, raw in sentences]
        for sentid, raw in sentences:
            records.append(
                canonical_record(
                    TASK, id=record_id(DATASET, split, sentid), dataset=DATASET, split=split, lang="en",
                    image=dict(image),
                    caption=raw,
                    answers=list(references),
                )
            )
    return records
