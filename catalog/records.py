"""The canonical record every adapter hands render: one header, and the fields each task's records carry.

A record is a plain dict (render, Ray and the templates read it as one), built by `canonical_record`,
which refuses a record that lacks a field its task needs or carries one its task does not know:

    canonical_record("vqa", id=record_id("vqav2", "val", 42), dataset="vqav2", split="val", lang="en",
                     image={"path": ..., "width": 640, "height": 480}, question="What colour?", answer="red")

The header is `id` (dataset:split:native id), `dataset`, `task`, `split`, `lang`, and the image as
`image` ({path, width, height}, a pairs shard and key, or bytes) or, for a video, its sampled `frames`.
`TASK_FIELDS` says, per task, which fields every record has (None where a split has no answers), which
only some of its datasets have, and which are carried for scoring and analysis; a template of the task
may use the first two kinds (`template_fields`), and `loom templates lint` checks that it does.
"""
from __future__ import annotations

from dataclasses import dataclass

HEADER = ("id", "dataset", "task", "split", "lang")
# carried by any task's records, for scoring held-out answers (render keeps them in the instructions)
SCORING = ("answers", "question_type")


class RecordError(ValueError):
    """A record an adapter built that does not fit its task's fields."""


@dataclass(frozen=True)
class TaskFields:
    """The fields of one task's records, beside the header and the image."""

    fields: tuple[str, ...]  # every record has them (None where the split has no answers)
    optional: tuple[str, ...] = ()  # only some of the task's datasets have them; templates may still use them
    carried: tuple[str, ...] = ()  # kept for scoring and analysis; no template reads them

    @property
    def known(self) -> frozenset[str]:
        return frozenset((*self.fields, *self.optional, *self.carried, *SCORING))


TASK_FIELDS: dict[str, TaskFields] = {
    "captioning": TaskFields(("caption",), carried=("domain",)),
    "captioning_reading": TaskFields(("caption", "ocr_tokens")),
    # GQA and IconQA ask questions (IconQA's sometimes with choices); VSR's records are statements (caption)
    "visual_reasoning": TaskFields(("answer",), optional=("question", "caption", "choices"),
                                   carried=("full_answer", "answer_index", "label", "relation", "subj", "obj")),
    "vqa": TaskFields(("question", "answer"), carried=("answer_type", "answerable")),
    "knowledge_vqa": TaskFields(("question", "answer"), optional=("choices", "hint"),
                                carried=("answer_type", "answer_index", "rationales", "difficult_direct_answer",
                                         "lecture", "solution")),
    "reading_vqa": TaskFields(("question", "answer"), optional=("ocr_tokens",)),
    "question_generation": TaskFields(("question", "answer"), carried=("source_id",)),
    "video_qa": TaskFields(("question", "answer"), carried=("category_id",)),
    # one round of a dialog: the caption, the rounds before it and this round's question
    "visual_dialog": TaskFields(("caption", "history", "question", "answer"),
                                carried=("choices", "answer_index", "image_id", "round")),
    # Hateful Memes: the meme's text and its yes/no answer
    "classification": TaskFields(("text", "answer"), carried=("label",)),
    # already conversations, used as they are (no template)
    "llava_instruct": TaskFields(("messages",)),
}


# per task: the fields a record must give, and those it may
_FIELD_SETS = {task: (frozenset(spec.fields), spec.known) for task, spec in TASK_FIELDS.items()}


def record_id(dataset: str, split: str, native_id) -> str:
    """A record's id: `dataset:split:native id`, unique across a render."""
    return f"{dataset}:{split}:{native_id}"


def template_fields(task: str) -> tuple[str, ...]:
    """The record fields a template of `task` may print: those every record of the task has, then those
    only some of its datasets have."""
    spec = _spec(task)
    return (*spec.fields, *spec.optional)


def _spec(task: str) -> TaskFields:
    if task not in TASK_FIELDS:
        raise RecordError(f"task {task!r}: not a task of the canonical record; tasks: {', '.join(TASK_FIELDS)}")
    return TASK_FIELDS[task]


def canonical_record(task: str, *, id: str, dataset: str, split: str, lang: str, image: dict | None = None,
                     frames: list[dict] | None = None, **fields) -> dict:
    """A record of `task`: the header, the image (or a video's frames) and the task's fields. A field its
    task needs that is not given, one its task does not know, or neither or both of image and frames are
    refused naming the record, the field and the task's fields."""
    # checked as two set comparisons: an adapter builds hundreds of thousands of records
    if task not in _FIELD_SETS or (image is None) == (frames is None) \
            or not _FIELD_SETS[task][0] <= fields.keys() <= _FIELD_SETS[task][1]:
        spec = _spec(task)
        missing = [name for name in spec.fields if name not in fields]
        raise RecordError(_misfit(task, spec, id, missing, sorted(fields.keys() - spec.known), image, frames))
    if frames is None:
        return {"id": id, "dataset": dataset, "task": task, "split": split, "lang": lang, "image": image, **fields}
    return {"id": id, "dataset": dataset, "task": task, "split": split, "lang": lang, "frames": frames, **fields}


def _misfit(task: str, spec: TaskFields, id: str, missing: list, unknown: list, image, frames) -> str:
    if missing:
        problem = f"lacks field(s) {', '.join(map(repr, missing))}"
    elif unknown:
        problem = f"has field(s) {', '.join(map(repr, unknown))} a {task} record does not carry"
    else:
        problem = "has both an image and frames" if image is not None else "has no image (nor a video's frames)"
    return (f"record {id!r}: {problem}; a {task} record has {', '.join(spec.fields)}"
            + (f", may have {', '.join(spec.optional)}" if spec.optional else "")
            + f", and carries {', '.join((*spec.carried, *SCORING))} (catalog/records.py)")
