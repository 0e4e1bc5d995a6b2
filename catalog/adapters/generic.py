"""Your own dataset: any table of image references and text (jsonl, json, parquet, csv, a Hugging Face
`datasets` folder) read into Loom's canonical records through a column mapping, in the spirit of
LLaMA-Factory's dataset_info.

A render entry names the file, the task and which column holds what:

    - adapter: generic
      path: /data/mine/train.jsonl          # .jsonl .json .parquet .csv, or a folder saved by datasets
      task: vqa                             # captioning, vqa, ... (a task with templates), or conversation
      name: mine                            # the records' dataset (default: the file's stem)
      image_root: /data/mine/images         # image paths in the table are relative to it
      lang: en                              # or columns.lang, one language per row
      columns: {image: img, question: q, answers: a}

Columns a task needs: `caption` (captioning); `question` and `answer` or `answers` (the VQA tasks);
`text` and `answer` (classification: the text shown with the image, and its label word); `messages`
(conversation: a list of {role, content} or ShareGPT's {from, value}, the image marked `<image>` in the
first user turn). `id` and `lang` are optional. A missing column is named with the
columns the table has.

A Hugging Face dataset is read by name instead of `path`: `hub: NAME` goes to `datasets.load_dataset(NAME,
hub_config, split=hub_split)` (hub_split defaults to the entry's split), so NAME is a Hub repository
(downloaded, or from the datasets cache when HF_DATASETS_OFFLINE=1) or a local dataset repository folder
of data files. The image column may hold a path (relative to `image_root`), the image's bytes, or what a
datasets `Image` feature stores, {bytes, path}: bytes are kept with the record, and render writes them
into a tar beside its instructions (pipelines/render.py's `embed_images`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from ..records import canonical_record, record_id
from . import AnnotationError
from .fields import image_entry

FORMATS = ("jsonl", "json", "parquet", "csv", "hf")
# what each kind of task reads of a row, beside the image
TASK_COLUMNS = {"captioning": ("caption",), "conversation": ("messages",), "classification": ("text",)}
# tasks whose records are a question and its answer(s); classification too reads an answer, with its text
QUESTION_TASKS = ("vqa", "knowledge_vqa", "reading_vqa", "visual_reasoning", "video_qa")
ANSWERED_TASKS = (*QUESTION_TASKS, "classification")
COLUMN_NAMES = ("id", "image", "question", "answer", "answers", "caption", "text", "messages", "lang")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def table_format(path: Path, format: str | None) -> str:
    if format:
        if format not in FORMATS:
            raise AnnotationError(f"{path}: format {format!r}; expected one of {', '.join(FORMATS)}")
        return format
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "parquet", "csv"):
        return suffix
    raise AnnotationError(f"{path}: cannot tell the format from the name; give `format:` ({', '.join(FORMATS)})")


def read_table(path: str | Path, format: str | None = None) -> pa.Table:
    """The whole table, as pyarrow reads it (a `datasets` folder through `datasets.load_from_disk`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = table_format(path, format)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if kind == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path)
        if kind == "jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            return pa.Table.from_pylist(rows)
        if kind == "json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise AnnotationError(f"{path}: top level is not a list of rows; expected [{{...}}, ...]")
            return pa.Table.from_pylist(rows)
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            raise AnnotationError(f"{path}: a DatasetDict of splits {sorted(loaded)}; point `path` at one split's "
                                  "folder")
        return loaded.data.table
    except AnnotationError:
        raise
    except (ValueError, OSError, pa.ArrowException, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not a readable {kind} table ({type(err).__name__}: {err})") from err


def load_hub_table(name: str, config: str | None = None, split: str = "train") -> pa.Table:
    """One split of a dataset `datasets.load_dataset` reads by name (a Hub repository or a local dataset
    repository folder), as its Arrow table: Image columns stay {bytes, path} structs, undecoded."""
    import datasets

    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except (ValueError, OSError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        offline = " (offline: HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set, so it must be in the datasets cache)" if \
            datasets.config.HF_HUB_OFFLINE else ""
        raise AnnotationError(f"hub {name}{f' ({config})' if config else ''}, split {split!r}: cannot be loaded"
                              f"{offline}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
                              "check the name, `hub_config` and `hub_split`") from err
    return loaded.with_format("arrow")[:]


# image formats a webdataset tar member may have that Loom's image loader reads (vlm/images.py)
TAR_IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def image_from_bytes(data: bytes, where: str) -> dict:
    """{"bytes", "format", "width", "height"} of an image given as bytes; one in a format the tar loader
    does not read (GIF, BMP, TIFF, ...) is re-encoded as PNG. Bytes that are no image are named."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            size, kind = image.size, image.format
            if kind not in TAR_IMAGE_FORMATS:
                buffer = io.BytesIO()
                image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, "PNG")
                data, kind = buffer.getvalue(), "PNG"
    except (UnidentifiedImageError, OSError) as err:
        raise AnnotationError(f"{where}: {len(data)} bytes that are not a readable image ({err})") from err
    return {"bytes": data, "format": TAR_IMAGE_FORMATS[kind], "width": size[0], "height": size[1]}


def _needed(task: str) -> tuple[str, ...]:
    if task in TASK_COLUMNS:
        return TASK_COLUMNS[task]
    if task in QUESTION_TASKS:
        return ("question",)
    raise AnnotationError(f"task {task!r}: the generic reader reads captioning, conversation, classification and "
                          f"{', '.join(QUESTION_TASKS)}")


def _messages(value, path: Path, row: int) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise AnnotationError(f"{path}: row {row}: messages is {type(value).__name__}; expected a list of turns")
    out = []
    for turn in value:
        role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise AnnotationError(f"{path}: row {row}: turn {turn!r}; expected {{role: user|assistant, content: "
                                  "text}} or ShareGPT's {from: human|gpt, value: text}")
        out.append({"role": ROLES[role], "content": content})
    return out


def read_generic(path: str | None, task: str, columns: dict | None = None, name: str | None = None,
                 image_root: str | None = None, lang: str | None = None, format: str | None = None,
                 split: str = "train", hub: str | None = None, hub_config: str | None = None,
                 hub_split: str | None = None) -> list[dict]:
    """Canonical records of a user's table (the file or folder at `path`, or the dataset `hub` names): one
    per row, in table order."""
    if (path is None) == (hub is None):
        raise AnnotationError(f"generic dataset {name or path or hub}: give one of `path` (a file or a saved "
                              "datasets folder) and `hub` (a name for datasets.load_dataset)")
    # `path` names the source in messages; a hub dataset is named by its name
    path = Path(path) if hub is None else Path(hub)
    columns = {key: key for key in COLUMN_NAMES} | dict(columns or {})
    unknown = set(columns) - set(COLUMN_NAMES)
    if unknown:
        raise AnnotationError(f"{path}: columns: unknown role(s) {sorted(unknown)}; map some of {list(COLUMN_NAMES)}")
    table = read_table(path, format) if hub is None else load_hub_table(hub, hub_config, hub_split or split)
    have = set(table.column_names)
    task_fields = _needed(task)
    needed = ["image", *task_fields]
    if task in ANSWERED_TASKS and not ({columns["answer"], columns["answers"]} & have):
        needed.append("answer")
    if lang is None:
        needed.append("lang")
    missing = [role for role in needed if columns[role] not in have]
    if missing:
        named = ", ".join(f"{role} (column {columns[role]!r})" for role in missing)
        hint = " or give `lang:` for the whole file" if "lang" in missing else ""
        raise AnnotationError(f"{path}: no column for {named}; the table has {sorted(have)}: map them with "
                              f"`columns: {{{', '.join(f'{role}: <column>' for role in missing)}}}`{hint}")
    dataset = name or (path.stem if hub is None else hub.rstrip("/").rpartition("/")[2])
    root = Path(image_root) if image_root else path.parent if hub is None else Path.cwd()
    rows = table.to_pylist()
    images: dict[str | bytes, dict] = {}
    records = []
    for row_number, row in enumerate(rows):
        image_name = row[columns["image"]]
        if isinstance(image_name, dict):  # a datasets Image feature: the bytes, or where they are
            image_name = image_name.get("bytes") or image_name.get("path")
        if isinstance(image_name, (bytes, bytearray)) and image_name:
            if image_name not in images:
                images[image_name] = image_from_bytes(bytes(image_name), f"{path}: row {row_number}: column "
                                                                         f"{columns['image']!r}")
        elif not isinstance(image_name, str) or not image_name:
            raise AnnotationError(f"{path}: row {row_number}: image is {image_name!r:.60}; expected a path relative "
                                  f"to {root}, or the image's bytes")
        elif image_name not in images:
            images[image_name] = image_entry(root / image_name, path, f"row {row_number}",
                                             f"column {columns['image']!r} names {image_name!r}")
        native_id = row.get(columns["id"], row_number) if columns["id"] in have else row_number
        if task == "conversation":
            fields = {"messages": _messages(row[columns["messages"]], path, row_number)}
        else:
            fields = {role: row[columns[role]] for role in task_fields}
        if task in ANSWERED_TASKS:
            answers = row.get(columns["answers"]) if columns["answers"] in have else None
            answer = row.get(columns["answer"]) if columns["answer"] in have else None
            answers = answers if isinstance(answers, list) else [answer] if answer is not None else [answers]
            fields.update(answers=[str(a) for a in answers], answer=str(answer if answer is not None else answers[0]))
        # a conversation passes through untemplated, as LLaVA-Instruct's do (chat formats know that task)
        records.append(canonical_record("llava_instruct" if task == "conversation" else task,
                                        id=record_id(dataset, split, native_id), dataset=dataset, split=split,
                                        lang=row[columns["lang"]] if lang is None else lang,
                                        image=dict(images[image_name]), **fields))
    return records
