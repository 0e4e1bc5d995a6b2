"""Visual Dialog v1.0 (visdial_1.0_{split}.json) to canonical visual-dialog records, one per dialog round."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_entry, load_annotation_json

DATASET = "visdial"
TASK = "visual_dialog"
# Where each split's images live under image_root. Train dialogs are on COCO train2014 and val2014
# images, so train tries both folders; val and test have VisDial's own 2018 folders.
IMAGE_NAMES = {
    "train": ("train2014/COCO_train2014_{image_id:012d}.jpg", "val2014/COCO_val2014_{image_id:012d}.jpg"),
    "val": ("VisualDialog_val2018/VisualDialog_val2018_{image_id:012d}.jpg",),
    "test": ("VisualDialog_test2018/VisualDialog_test2018_{image_id:012d}.jpg",),
}
# The top-level `split` of the v1.0 files, where it is not the split's own name: the val and test
# files say val2018 and test2018 (after their image folders), the train file plain train.
FILE_SPLITS = {"val2018": "val", "test2018": "test"}
log = logging.getLogger(__name__)


class _Pool:
    """data.questions or data.answers: strings referenced by index from the rounds."""

    def __init__(self, data: dict, name: str, path: Path):
        self.name, self.path = name, path
        self.texts = field(data, name, list, path, "data")

    def text(self, index: object, where: str, referrer: str) -> str:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.texts):
            raise AnnotationError(
                f"{self.path}: {where}: {referrer} is {index!r:.60}; expected an index into data.{self.name} "
                f"({len(self.texts)} {self.name})"
            )
        text = self.texts[index]
        if not isinstance(text, str):
            raise AnnotationError(f"{self.path}: data.{self.name}[{index}] is {text!r:.60}; expected a string")
        return text


def _image(image_id: int, root: Path, names: tuple[str, ...], path: Path, where: str) -> dict:
    candidates = [root / name.format(image_id=image_id) for name in names]
    found = next((c for c in candidates if c.is_file()), candidates[0])
    if not found.is_file() and len(candidates) > 1:
        tried = ", ".join(str(c) for c in candidates)
        raise AnnotationError(f"{path}: {where}: image_id {image_id} has no image (tried {tried})")
    return image_entry(found, path, where, f"image_id {image_id}")


def read_visdial(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    image_name: str | tuple[str, ...] | None = None,
) -> list[dict]:
    """One canonical record per round of every dialog in a VisDial v1.0 file, dialog by dialog.

    `question` and `answer` are the round's texts, `history` the earlier
    rounds' {"question", "answer"}, `caption` the dialog's caption, `choices`
    the round's answer_options as texts and `answer_index` its gt_index.
    Test dialogs stop at a round with no answer: that round's answer,
    answers and answer_index are None; rounds without answer_options (the
    test file's earlier rounds) have choices None. `image_name` is a
    template, or templates tried in order, relative to `image_root`, with
    {image_id}; the default is IMAGE_NAMES[split].
    """
    path = Path(annotation_file)
    top = load_annotation_json(path)
    data = field(top, "data", dict, path, "top level")
    questions = _Pool(data, "questions", path)
    answers = _Pool(data, "answers", path)
    dialogs = field(data, "dialogs", list, path, "data")
    if isinstance(top.get("split"), str) and FILE_SPLITS.get(top["split"], top["split"]) != split:
        log.warning("%s: the file says split %r; its records are labelled %r as asked", path, top["split"], split)
    if image_name is None:
        if split not in IMAGE_NAMES:
            raise ValueError(
                f"visdial: split {split!r} has no default image folder ({', '.join(IMAGE_NAMES)} have); "
                "pass image_name, e.g. 'VisualDialog_val2018/VisualDialog_val2018_{image_id:012d}.jpg'"
            )
        image_name = IMAGE_NAMES[split]
    names = (image_name,) if isinstance(image_name, str) else tuple(image_name)
    root = Path(os.path.abspath(image_root))

    records = []
    for d, dialog in enumerate(dialogs):
        where = f"data.dialogs[{d}]"
        image_id = field(dialog, "image_id", int, path, where)
        where = f"data.dialogs[{d}] (image_id {image_id})"
        caption = field(dialog, "caption", str, path, where)
        rounds = field(dialog, "dialog", list, path, where)
        image = _image(image_id, root, names, path, where)
        history: list[dict] = []
        for r, turn in enumerate(rounds):
            round_where = f"{where}.dialog[{r}]"
            question = questions.text(field(turn, "question", int, path, round_where), round_where, "field 'question'")
            if "answer" in turn:
                answer = answers.text(turn["answer"], round_where, "field 'answer'")
            elif r == len(rounds) - 1:
                answer = None  # the test file's last round: the one to answer
            else:
                raise AnnotationError(f"{path}: {round_where}: missing field 'answer' (only a dialog's last round may lack it)")

            choices = answer_index = None
            if "answer_options" in turn:
                options = field(turn, "answer_options", list, path, round_where)
                choices = [answers.text(o, round_where, f"answer_options[{n}]") for n, o in enumerate(options)]
                if answer is not None:
                    answer_index = field(turn, "gt_index", int, path, round_where)
                    if not 0 <= answer_index < len(options):
                        raise AnnotationError(
                            f"{path}: {round_where}: field 'gt_index' is {answer_index}; expected an index into its "
                            f"{len(options)} answer_options"
                        )
                    if options[answer_index] != turn["answer"]:
                        raise AnnotationError(
                            f"{path}: {round_where}: answer_options[gt_index={answer_index}] is answer "
                            f"{options[answer_index]}, but field 'answer' is {turn['answer']}"
                        )

            records.append(
                canonical_record(
                    TASK, id=record_id(DATASET, split, f"{image_id}_{r + 1}"), dataset=DATASET, split=split,
                    lang="en", image=dict(image), image_id=image_id, round=r + 1, caption=caption,
                    history=[dict(h) for h in history], question=question, answer=answer,
                    answers=[answer] if answer is not None else None, choices=choices, answer_index=answer_index,
                )
            )
            history.append({"question": question, "answer": answer})
    log.info("visdial %s: %d dialogs, %d rounds", split, len(dialogs), len(records))
    return records
