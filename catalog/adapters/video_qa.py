"""Video QA (MSVD-QA, MSRVTT-QA, iVQA) to canonical records whose `frames` are sampled from each video.

InstructBLIP sees a video as a few frames sampled uniformly from it (four
by default): catalog/video_frames.py samples them, as JPEGs under
frames_dir/<dataset>/<video stem>/<k>.jpg reused on a later run as long as
the video file and the sampling are unchanged. The readers here find each
question's video and name the annotation row when it cannot be decoded.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..records import canonical_record, record_id
from ..video_frames import UndecodableVideo, sample_frames
from . import AnnotationError
from .fields import field, load_annotation_list, most_common_answer

TASK = "video_qa"
IVQA_ANSWER_COLUMNS = ("answer1", "answer2", "answer3", "answer4", "answer5")
IVQA_VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv")


class _FrameSampler:
    """Samples each video once per reader call, turning failures into errors that name the annotation row."""

    def __init__(self, annotation_file: Path, frames_dir: str | os.PathLike, dataset: str, frames: int):
        if frames < 1:
            raise ValueError(f"frames is {frames}; sample at least one frame per video")
        self.annotation_file = annotation_file
        self.folder = Path(os.path.abspath(frames_dir)) / dataset
        self.frames = frames
        self.sampled: dict[tuple, list[dict]] = {}

    def __call__(self, video_path: Path, stem: str, where: str, named: str, window=None) -> list[dict]:
        key = (str(video_path), window)
        if key not in self.sampled:
            if not video_path.is_file():
                raise AnnotationError(f"{self.annotation_file}: {where}: {named}, but there is no video at {video_path}")
            try:
                self.sampled[key] = sample_frames(video_path, self.folder / stem, self.frames, window)
            except UndecodableVideo as error:
                raise AnnotationError(
                    f"{self.annotation_file}: {where}: {named}: {video_path} cannot be decoded ({error})"
                ) from error
        return [dict(entry) for entry in self.sampled[key]]


def _record(dataset: str, split: str, native_id: str, frames: list[dict], question: str, answer: str,
            answers: list[str]) -> dict:
    return canonical_record(TASK, id=record_id(dataset, split, native_id), dataset=dataset, split=split, lang="en",
                            frames=frames, question=question, answer=answer, answers=answers)


# ---------------------------------------------------------------- MSVD-QA


def read_youtube_mapping(mapping_file: str | os.PathLike) -> dict[int, str]:
    """video_id -> MSVD clip name, from youtube_mapping.txt lines '<clip name> vid<N>'."""
    path = Path(mapping_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: YouTube mapping file not found")
    clips: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
            raise AnnotationError(f"{path}: line {number}: {line!r:.80} is not '<clip name> vid<N>'")
        video_id = int(parts[1][3:])
        if video_id in clips:
            raise AnnotationError(f"{path}: line {number}: vid{video_id} is mapped twice ({clips[video_id]!r} and {parts[0]!r})")
        clips[video_id] = parts[0]
    return clips


def read_msvd_qa(
    annotation_file: str | os.PathLike,
    video_root: str | os.PathLike,
    split: str,
    frames_dir: str | os.PathLike,
    mapping_file: str | os.PathLike,
    frames: int = 4,
) -> list[dict]:
    """One canonical record per question of an MSVD-QA {split}_qa.json, in file order.

    video_id N is the clip that youtube_mapping.txt maps to vid<N>; its video
    is video_root/<clip name>.avi (the MSVD YouTubeClips folder), or
    video_root/vid<N>.avi where the authors' renamed copies are used.
    """
    dataset = "msvd_qa"
    path = Path(annotation_file)
    rows = load_annotation_list(path, "questions")
    clips = read_youtube_mapping(mapping_file)
    root = Path(os.path.abspath(video_root))
    sample = _FrameSampler(path, frames_dir, dataset, frames)

    records = []
    for index, row in enumerate(rows):
        where = f"[{index}]"
        question_id = field(row, "id", int, path, where)
        text = field(row, "question", str, path, where)
        answer = field(row, "answer", str, path, where)
        video_id = field(row, "video_id", int, path, where)
        if video_id not in clips:
            raise AnnotationError(f"{path}: {where}: video_id {video_id} has no line 'vid{video_id}' in {mapping_file}")
        clip = clips[video_id]
        video_path = root / f"{clip}.avi"
        if not video_path.is_file() and (root / f"vid{video_id}.avi").is_file():
            video_path = root / f"vid{video_id}.avi"
        named = f"video_id {video_id} (clip {clip!r})"
        record = _record(dataset, split, str(question_id), sample(video_path, clip, where, named), text, answer, [answer])
        records.append(record)
    return records


# ---------------------------------------------------------------- MSRVTT-QA


def read_msrvtt_qa(
    annotation_file: str | os.PathLike,
    video_root: str | os.PathLike,
    split: str,
    frames_dir: str | os.PathLike,
    frames: int = 4,
) -> list[dict]:
    """One canonical record per question of an MSRVTT-QA {split}_qa.json, in file order.

    video_id N is video_root/video<N>.mp4; category_id is carried as given.
    """
    dataset = "msrvtt_qa"
    path = Path(annotation_file)
    rows = load_annotation_list(path, "questions")
    root = Path(os.path.abspath(video_root))
    sample = _FrameSampler(path, frames_dir, dataset, frames)

    records = []
    for index, row in enumerate(rows):
        where = f"[{index}]"
        question_id = field(row, "id", int, path, where)
        text = field(row, "question", str, path, where)
        answer = field(row, "answer", str, path, where)
        category_id = field(row, "category_id", int, path, where)
        video_id = field(row, "video_id", int, path, where)
        stem = f"video{video_id}"
        record = _record(dataset, split, str(question_id),
                         sample(root / f"{stem}.mp4", stem, where, f"video_id {video_id}"), text, answer, [answer])
        record["category_id"] = category_id
        records.append(record)
    return records


# ---------------------------------------------------------------- iVQA


def _seconds(value: str, column: str, path: Path, where: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise AnnotationError(f"{path}: {where}: column '{column}' is {value!r:.40}; expected seconds") from None
    if seconds < 0:
        raise AnnotationError(f"{path}: {where}: column '{column}' is {value!r}; expected seconds >= 0")
    return seconds


def read_ivqa(
    annotation_file: str | os.PathLike,
    video_root: str | os.PathLike,
    split: str,
    frames_dir: str | os.PathLike,
    frames: int = 4,
    cut_to_clip: bool = True,
) -> list[dict]:
    """One canonical record per row of an iVQA {split}.csv, in file order.

    The video is video_root/<video_id>.mp4 (or .webm, .mkv). answers are the
    non-empty answer1..answer5; answer is the most common of them. When the
    file has start and end columns and `cut_to_clip` is true, frames are
    sampled from those seconds of the video; pass cut_to_clip=False when the
    videos on disk are already cut to the clips. The native id is
    <video_id>_<start>_<end> (or <video_id> without a clip window), with
    -2, -3 ... appended if a clip is asked about more than once.
    """
    dataset = "ivqa"
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    root = Path(os.path.abspath(video_root))
    sample = _FrameSampler(path, frames_dir, dataset, frames)

    records = []
    seen: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            for column in ("video_id", "question", *IVQA_ANSWER_COLUMNS):
                if column not in header:
                    raise AnnotationError(f"{path}: header: missing column '{column}' (header is {','.join(header)!r:.120})")
            windowed = cut_to_clip and "start" in header and "end" in header
            for row in reader:
                where = f"line {reader.line_num}"
                if None in row or any(value is None for value in row.values()):
                    raise AnnotationError(f"{path}: {where}: has {len(header)} columns in the header but a different number here")
                video_id = row["video_id"].strip()
                text = row["question"]
                if not video_id:
                    raise AnnotationError(f"{path}: {where}: column 'video_id' is empty")
                if not text.strip():
                    raise AnnotationError(f"{path}: {where}: column 'question' is empty")
                answers = [row[column].strip() for column in IVQA_ANSWER_COLUMNS if row[column].strip()]
                if not answers:
                    raise AnnotationError(f"{path}: {where}: columns answer1..answer5 are all empty")

                window = None
                clip_key = video_id
                if windowed and row["start"].strip() and row["end"].strip():
                    window = (_seconds(row["start"], "start", path, where), _seconds(row["end"], "end", path, where))
                    if window[1] <= window[0]:
                        raise AnnotationError(f"{path}: {where}: clip ends ({row['end']}) before it starts ({row['start']})")
                    clip_key = f"{video_id}_{row['start'].strip()}_{row['end'].strip()}"
                seen[clip_key] = seen.get(clip_key, 0) + 1
                native_id = clip_key if seen[clip_key] == 1 else f"{clip_key}-{seen[clip_key]}"

                candidates = [root / f"{video_id}{suffix}" for suffix in IVQA_VIDEO_SUFFIXES]
                video_path = next((c for c in candidates if c.is_file()), candidates[0])
                named = f"video_id {video_id!r}" + (f" (clip {window[0]:g}s-{window[1]:g}s)" if window else "")
                records.append(_record(dataset, split, native_id, sample(video_path, clip_key, where, named, window),
                                       text, most_common_answer(answers), answers))
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path}: not UTF-8 text ({error})") from error
    except csv.Error as error:
        raise AnnotationError(f"{path}: not valid CSV ({error})") from error
    return records
