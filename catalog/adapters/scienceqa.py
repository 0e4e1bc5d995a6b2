"""ScienceQA (problems.json, pid_splits.json) to canonical multiple-choice records for the problems with an image."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_size, load_annotation_json, string_list

DATASET = "scienceqa"
TASK = "knowledge_vqa"
log = logging.getLogger(__name__)


def _split_pids(problems: dict, problems_path: Path, split: str, splits_file: str | os.PathLike | None) -> list[str]:
    """The split's problem ids: pid_splits.json's list when given, else problems.json's order filtered on `split`."""
    if splits_file is None:
        pids = []
        for pid, problem in problems.items():
            if field(problem, "split", str, problems_path, f"problem {pid!r}") == split:
                pids.append(pid)
        if not pids:
            found = sorted({p.get("split") for p in problems.values() if isinstance(p.get("split"), str)})
            raise AnnotationError(
                f"{problems_path}: no problem has split {split!r} (splits in the file: {', '.join(found)}); "
                "pass splits_file=pid_splits.json for splits such as minitest"
            )
        return pids
    splits_path = Path(splits_file)
    splits = load_annotation_json(splits_path)
    if split not in splits:
        raise AnnotationError(f"{splits_path}: no split {split!r} (splits in the file: {', '.join(splits)})")
    pids = []
    for index, pid in enumerate(field(splits, split, list, splits_path, "top level")):
        # pid_splits.json lists ids as strings; problems.json keys are strings too.
        if isinstance(pid, bool) or not isinstance(pid, (str, int)):
            raise AnnotationError(f"{splits_path}: {split}[{index}]: is {pid!r:.60}; expected a problem id")
        if str(pid) not in problems:
            raise AnnotationError(f"{splits_path}: {split}[{index}]: problem id {pid!r} is not in {problems_path}")
        pids.append(str(pid))
    return pids


def read_scienceqa(
    problems_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    splits_file: str | os.PathLike | None = None,
) -> list[dict]:
    """One canonical record per problem of `split` that has an image, in split order.

    Problems without an image (`image` null or "") are skipped, as
    InstructBLIP evaluates only the image-context (IMG) questions; the log
    says how many of the split's problems were kept and how many skipped.
    The split is pid_splits.json's list for `split` when `splits_file` is
    given (so minitest and trainval work), else the problems whose own
    `split` field equals `split`, in problems.json order. `image_root` holds
    one folder per split: an image is image_root/{problem's split}/{pid}/{image}.
    `answer` is the text of the correct choice and `answer_index` its index.
    """
    problems_path = Path(problems_file)
    problems = load_annotation_json(problems_path)
    root = Path(os.path.abspath(image_root))
    pids = _split_pids(problems, problems_path, split, splits_file)
    records = []
    for pid in pids:
        problem = problems[pid]
        where = f"problem {pid!r}"
        if not isinstance(problem, dict) or "image" not in problem:
            field(problem, "image", str, problems_path, where)  # raises, naming what is wrong
        if problem["image"] is None or problem["image"] == "":
            continue
        image_name = field(problem, "image", str, problems_path, where)
        question = field(problem, "question", str, problems_path, where)
        choices = string_list(problem, "choices", problems_path, where)
        answer_index = field(problem, "answer", int, problems_path, where)
        if not 0 <= answer_index < len(choices):
            raise AnnotationError(
                f"{problems_path}: {where}: field 'answer' is {answer_index}; expected an index into its "
                f"{len(choices)} choices"
            )
        image_split = field(problem, "split", str, problems_path, where)
        image_path = root / image_split / pid / image_name
        if not image_path.is_file():
            raise AnnotationError(
                f"{problems_path}: {where}: field 'image' is {image_name!r}, but there is no image at {image_path}"
            )
        try:
            width, height = image_size(image_path)
        except OSError as error:
            raise AnnotationError(f"{problems_path}: {where}: {image_path} is not a readable image ({error})") from error
        records.append(
            canonical_record(
                TASK, id=record_id(DATASET, split, pid), dataset=DATASET, split=split, lang="en",
                image={"path": str(image_path), "width": width, "height": height},
                question=question,
                choices=list(choices),
                answer_index=answer_index,
                answer=choices[answer_index],
                answers=[choices[answer_index]],
                hint=field(problem, "hint", str, problems_path, where),
                lecture=field(problem, "lecture", str, problems_path, where),
                solution=field(problem, "solution", str, problems_path, where),
            )
        )
    log.info(
        "scienceqa %s: %d problems, %d with an image kept, %d without an image skipped",
        split, len(pids), len(records), len(pids) - len(records),
    )
    return records
