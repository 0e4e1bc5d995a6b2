"""IconQA problem folders (iconqa/{split}/{sub_task}/{pid}/data.json) to canonical visual-reasoning records."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import field, image_entry, load_annotation_json, string_list

DATASET = "iconqa"
TASK = "visual_reasoning"
SUB_TASKS = ("choose_txt", "choose_img", "fill_in_blank")
# The folders problems live in; pid_splits.json also names unions of them (trainval, minitest, ...).
FOLDER_SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def _pid_order(pid: str) -> tuple:
    # IconQA pids are decimal strings; a folder listing is in no useful order, so sort them as numbers.
    return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def _folder_pids(root: Path, split: str, sub_task: str) -> list[tuple[str, Path]]:
    """(pid, problem folder) for every problem folder of iconqa/{split}/{sub_task}/, in pid order."""
    folder = root / "iconqa" / split / sub_task
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no IconQA problem folder for split {split!r}, sub-task {sub_task!r}; data_root must be "
            "the iconqa_data folder that holds iconqa/{train,val,test}/ (for splits such as trainval or "
            "minitest, pass splits_file=pid_splits.json)"
        )
    problems = [p for p in folder.iterdir() if p.is_dir()]
    return [(p.name, p) for p in sorted(problems, key=lambda p: _pid_order(p.name))]


def _listed_pids(root: Path, split: str, sub_task: str, splits_path: Path, splits: dict) -> list[tuple[str, Path]]:
    """(pid, problem folder) for pid_splits.json's list '{sub_task}_{split}', found in whichever split folder holds it."""
    key = f"{sub_task}_{split}"
    if key not in splits:
        raise AnnotationError(f"{splits_path}: no list {key!r} (lists in the file: {', '.join(splits)})")
    # Look in the named split's own folder first: trainval or minitest problems live in train/val/test.
    folders = [split] if split in FOLDER_SPLITS else []
    folders += [s for s in FOLDER_SPLITS if s not in folders]
    out = []
    for index, pid in enumerate(field(splits, key, list, splits_path, "top level")):
        if isinstance(pid, bool) or not isinstance(pid, (str, int)):
            raise AnnotationError(f"{splits_path}: {key}[{index}]: is {pid!r:.60}; expected a problem id")
        pid = str(pid)
        found = next((root / "iconqa" / s / sub_task / pid for s in folders
                      if (root / "iconqa" / s / sub_task / pid).is_dir()), None)
        if found is None:
            raise AnnotationError(
                f"{splits_path}: {key}[{index}]: problem {pid!r} has no folder "
                f"{root / 'iconqa'}/{{{','.join(folders)}}}/{sub_task}/{pid}"
            )
        out.append((pid, found))
    return out


def _answer_index(problem: dict, choices: list, path: Path, where: str) -> int:
    if "answer" not in problem:
        field(problem, "answer", int, path, where)  # raises: missing field 'answer'
    answer = problem["answer"]
    # IconQA's own loaders read the index through str() and int(), so a digit string is the same index.
    if isinstance(answer, str) and answer.isdigit():
        answer = int(answer)
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise AnnotationError(f"{path}: {where}: field 'answer' is {answer!r:.60}; expected an index into 'choices'")
    if not 0 <= answer < len(choices):
        raise AnnotationError(
            f"{path}: {where}: field 'answer' is {answer}; expected an index into its {len(choices)} choices"
        )
    return answer


def _problem_record(pid: str, folder: Path, sub_task: str, split: str) -> dict:
    path = folder / "data.json"
    if not path.is_file():
        raise AnnotationError(f"{folder}: problem {pid!r} has no data.json")
    problem = load_annotation_json(path)
    where = f"problem {pid!r}"
    question = field(problem, "question", str, path, where)
    question_type = field(problem, "ques_type", str, path, where)
    if question_type != sub_task:
        raise AnnotationError(
            f"{path}: {where}: field 'ques_type' is {question_type!r}, but the problem is in the {sub_task!r} folder"
        )
    image = image_entry(folder / "image.png", path, where, "its folder's image.png is named by the layout")

    choices = answer_index = None
    if sub_task == "fill_in_blank":
        answer = field(problem, "answer", str, path, where)
    else:
        choices = string_list(problem, "choices", path, where)
        if sub_task == "choose_img":
            # Image choices are file names in the problem's folder (choice_0.png, ...); records carry their paths.
            for n, choice in enumerate(choices):
                image_entry(folder / choice, path, f"{where}: choices[{n}]", f"choice {choice!r}")
            choices = [str(folder / choice) for choice in choices]
        answer_index = _answer_index(problem, choices, path, where)
        answer = choices[answer_index]

    return canonical_record(
        TASK, id=record_id(DATASET, split, pid), dataset=DATASET, split=split, lang="en",
        image=image,
        question=question,
        choices=choices,
        answer_index=answer_index,
        answer=answer,
        answers=[answer],
        question_type=question_type,
    )


def read_iconqa(
    data_root: str | os.PathLike,
    split: str,
    sub_tasks: tuple[str, ...] | list[str] = ("choose_txt",),
    splits_file: str | os.PathLike | None = None,
) -> list[dict]:
    """One canonical record per IconQA problem of `split` in `sub_tasks`, sub-task by sub-task.

    `data_root` is the iconqa_data folder: each problem is
    iconqa/{split}/{sub_task}/{pid}/ with data.json and image.png. Without
    `splits_file` the problems are that folder's, in pid order; with
    pid_splits.json they are its list '{sub_task}_{split}', in list order
    (so trainval and minitest work). InstructBLIP evaluates choose_txt, the
    default. choose_txt: `choices` are the texts, `answer_index` is data.json's
    'answer'. choose_img: `choices` are the absolute paths of the choice images
    (choice_0.png, ...) and `answer` is the right one's path. fill_in_blank:
    `answer` is the text, `choices` and `answer_index` are None.
    """
    if isinstance(sub_tasks, str):
        sub_tasks = (sub_tasks,)
    unknown = [t for t in sub_tasks if t not in SUB_TASKS]
    if unknown:
        raise ValueError(f"iconqa: unknown sub-task(s) {', '.join(map(repr, unknown))}; IconQA has {', '.join(SUB_TASKS)}")
    root = Path(os.path.abspath(data_root))
    splits_path = splits = None
    if splits_file is not None:
        splits_path = Path(splits_file)
        splits = load_annotation_json(splits_path)
    elif split not in FOLDER_SPLITS:
        raise ValueError(
            f"iconqa: split {split!r} has no folder of its own (folders: {', '.join(FOLDER_SPLITS)}); "
            "pass splits_file=pid_splits.json for it"
        )

    records = []
    for sub_task in sub_tasks:
        if splits is None:
            pids = _folder_pids(root, split, sub_task)
        else:
            pids = _listed_pids(root, split, sub_task, splits_path, splits)
        records.extend(_problem_record(pid, folder, sub_task, split) for pid, folder in pids)
        log.info("iconqa %s: %d %s problems", split, len(pids), sub_task)
    return records
