"""LLaVA-Instruct-150K (conversation_58k, detail_23k, complex_reasoning_77k JSON) to canonical conversation records."""

from __future__ import annotations

import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_entry, load_annotation_list

TASK = "llava_instruct"
DATASETS = ("llava_conversation", "llava_detail", "llava_complex_reasoning")
IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "gpt": "assistant"}


def _native_id(row: dict, path: Path, where: str) -> str:
    if "id" not in row:
        raise AnnotationError(f"{path}: {where}: missing field 'id'")
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise AnnotationError(f"{path}: {where}: field 'id' is {value!r:.60}; expected a string or an integer")
    return str(value)


def _messages(conversations: list, path: Path, where: str) -> list[dict]:
    """user/assistant messages with "<image>" once, at the start of the first user turn, then a newline."""
    if not conversations:
        raise AnnotationError(f"{path}: {where}: field 'conversations' is empty; expected human/gpt turns")
    messages = []
    for turn_index, turn in enumerate(conversations):
        turn_where = f"{where}.conversations[{turn_index}]"
        speaker = field(turn, "from", str, path, turn_where)
        value = field(turn, "value", str, path, turn_where)
        expected = "human" if turn_index % 2 == 0 else "gpt"
        if speaker != expected:
            raise AnnotationError(
                f"{path}: {turn_where}: field 'from' is {speaker!r}; expected {expected!r} "
                "(turns alternate human, gpt, starting with human)"
            )
        tokens = value.count(IMAGE_TOKEN)
        if turn_index == 0 and tokens != 1:
            raise AnnotationError(
                f"{path}: {turn_where}: field 'value' holds {IMAGE_TOKEN!r} {tokens} times; expected exactly once "
                "in the first human turn"
            )
        if turn_index > 0 and tokens:
            raise AnnotationError(
                f"{path}: {turn_where}: field 'value' holds {IMAGE_TOKEN!r}; only the first human turn may"
            )
        if turn_index == 0:
            # LLaVA puts the token before or after the question ("<image>\nQ" or "Q\n<image>"); Loom always puts it first.
            value = IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()
        messages.append({"role": ROLES[speaker], "content": value})
    if len(conversations) % 2:
        raise AnnotationError(
            f"{path}: {where}.conversations[{len(conversations) - 1}]: the conversation ends on a human turn "
            "with no gpt answer"
        )
    return messages


def read_llava_instruct(
    annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str, dataset: str
) -> list[dict]:
    """One canonical conversation record per entry of a LLaVA-Instruct JSON list, in file order.

    `dataset` is the card the file belongs to (llava_conversation,
    llava_detail or llava_complex_reasoning); `image_root` is the folder of
    COCO train2017 images the `image` file names are in. Turns must
    alternate human, gpt, starting with human and ending with gpt; "<image>"
    must be in the first human turn, once. A native id that comes back later
    in the file (llava_instruct_150k.json repeats an image's id once per
    part) gets "#<row>" appended to its record id, so ids stay unique.
    """
    if dataset not in DATASETS:
        raise ValueError(f"read_llava_instruct: dataset is {dataset!r}; expected one of {', '.join(DATASETS)}")
    path = Path(annotation_file)
    root = Path(os.path.abspath(image_root))
    images: dict[str, dict] = {}
    seen: set[str] = set()
    records = []
    for index, row in enumerate(load_annotation_list(path, "conversations")):
        where = f"[{index}]"
        native_id = _native_id(row, path, where)
        image_name = field(row, "image", str, path, where)
        messages = _messages(field(row, "conversations", list, path, where), path, where)
        if image_name not in images:
            images[image_name] = image_entry(root / image_name, path, where, f"field 'image' names {image_name!r}")
        unique_id = native_id if native_id not in seen else f"{native_id}#{index}"
        seen.add(native_id)
        records.append(canonical_record(TASK, id=record_id(dataset, split, unique_id), dataset=dataset, split=split,
                                        lang="en", image=dict(images[image_name]), messages=messages))
    return records


def read_llava_conversation(annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """conversation_58k.json: multi-turn chats about an image."""
    return read_llava_instruct(annotation_file, image_root, split, "llava_conversation")


def read_llava_detail(annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[dict]:
    """detail_23k.json: a request for a detailed description and the description."""
    return read_llava_instruct(annotation_file, image_root, split, "llava_detail")


def read_llava_complex_reasoning(
    annotation_file: str | os.PathLike, image_root: str | os.PathLike, split: str
) -> list[dict]:
    """complex_reasoning_77k.json: a question that needs reasoning and its worked answer."""
    return read_llava_instruct(annotation_file, image_root, split, "llava_complex_reasoning")
