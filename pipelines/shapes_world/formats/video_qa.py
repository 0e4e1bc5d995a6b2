"""Shapes-world videos in the MSVD-QA, MSRVTT-QA and iVQA layouts.

Each video is a short clip in which one shape slides across the frame from
one side to the other, sometimes past a second shape that stays still, so
questions can ask which way a shape moves, what colour a shape is, what is
moving and how many shapes there are; every answer is true of the frames
drawn. Layouts:

- MSVD-QA: msvd_qa/{train,val,test}_qa.json ([{"answer", "id", "question", "video_id"}]),
  msvd_qa/youtube_mapping.txt ("<clip name> vid<N>"), msvd_qa/YouTubeClips/<clip name>.avi (MJPG).
- MSRVTT-QA: msrvtt_qa/{train,val,test}_qa.json ([{"answer", "category_id", "id", "question",
  "video_id"}]), msrvtt_qa/video/video<N>.mp4 (mp4v).
- iVQA: ivqa/{train,val,test}.csv (video_id,start,end,question,answer1..answer5,type), ivqa/videos/
  <video_id>.mp4. The video is longer than the clip: before `start` and after `end` seconds it
  shows the empty background, so only frames sampled inside the clip see the shapes.
"""

from __future__ import annotations

import csv
import io
import os
import random
import string
from dataclasses import dataclass
from pathlib import Path

from ..draw import draw_scene
from ..export import _write_bytes, _write_json
from ..scenes import BACKGROUNDS, COLOURS, NUMBER_EN, SHAPE_KINDS, Scene, Shape

SPLITS = ("train", "val", "test")
SIDE = 20  # every shape's box is SIDE x SIDE pixels
MARGIN = 2

# (width, height, frames per second, container suffix, fourcc) per dataset.
VIDEO_FORMATS = {
    "msvd_qa": (96, 96, 12, ".avi", "MJPG"),
    "msrvtt_qa": (96, 72, 12, ".mp4", "mp4v"),
    "ivqa": (80, 64, 4, ".mp4", "mp4v"),
}
MSRVTT_CATEGORIES = 20  # MSR-VTT's video categories are numbered 0-19
IVQA_DISSENTING_ANSWERS = 2  # at most two of five annotators word it differently
YOUTUBE_ID_CHARS = string.ascii_letters + string.digits + "-_"


@dataclass(frozen=True)
class MovingScene:
    """A clip: `frame_count` frames; the mover slides from `direction`'s opposite side to that side.

    Frames outside [clip_first, clip_stop) show only the background (iVQA's
    video around the clip); for the other datasets the clip is the whole video.
    """

    width: int
    height: int
    fps: int
    frame_count: int
    background: str
    mover_kind: str
    mover_colour: str
    mover_y0: int
    direction: str  # "left" or "right": where the mover ends up
    still: Shape | None
    clip_first: int
    clip_stop: int

    def mover_at(self, index: int) -> Shape | None:
        """The mover's box in frame `index` (None outside the clip)."""
        if not self.clip_first <= index < self.clip_stop:
            return None
        left, right = MARGIN, self.width - SIDE - MARGIN
        start, end = (left, right) if self.direction == "right" else (right, left)
        steps = max(1, self.clip_stop - self.clip_first - 1)
        x0 = round(start + (end - start) * (index - self.clip_first) / steps)
        return Shape(self.mover_kind, self.mover_colour, x0, self.mover_y0, x0 + SIDE, self.mover_y0 + SIDE)

    def scene_at(self, index: int) -> Scene:
        mover = self.mover_at(index)
        if mover is None:
            return Scene(self.width, self.height, self.background, [])
        return Scene(self.width, self.height, self.background, [mover] + ([self.still] if self.still else []))

    @property
    def shape_count(self) -> int:
        return 2 if self.still else 1


def moving_scene(seed: int, dataset: str, split: str, index: int) -> MovingScene:
    """The index-th video of a dataset's split."""
    rng = random.Random(f"shapes-world/{seed}/{dataset}/{split}/{index}")
    width, height, fps, _, _ = VIDEO_FORMATS[dataset]
    kinds = rng.sample(SHAPE_KINDS, 2)
    colours = rng.sample(COLOURS, 2)
    # The mover keeps to one half and the still shape to the other, so they never overlap.
    mover_on_top = rng.random() < 0.5
    top_band = (MARGIN, height // 2 - SIDE - 1)
    bottom_band = (height // 2 + 1, height - SIDE - MARGIN)
    mover_y0 = rng.randint(*(top_band if mover_on_top else bottom_band))
    still = None
    if rng.random() < 0.6:
        y0 = rng.randint(*(bottom_band if mover_on_top else top_band))
        x0 = rng.randint(MARGIN, width - SIDE - MARGIN)
        still = Shape(kinds[1], colours[1], x0, y0, x0 + SIDE, y0 + SIDE)
    if dataset == "ivqa":
        # Whole seconds before and after the clip, as iVQA's start/end are.
        before, clip_seconds, after = rng.randint(1, 2), rng.randint(3, 4), rng.randint(1, 2)
        frame_count = (before + clip_seconds + after) * fps
        clip_first, clip_stop = before * fps, (before + clip_seconds) * fps
    else:
        frame_count = rng.randint(12, 24)
        clip_first, clip_stop = 0, frame_count
    return MovingScene(width, height, fps, frame_count, rng.choice(BACKGROUNDS), kinds[0], colours[0], mover_y0,
                       rng.choice(("left", "right")), still, clip_first, clip_stop)


def clip_seconds(video: MovingScene) -> tuple[int, int]:
    """iVQA's start and end seconds of the clip."""
    return video.clip_first // video.fps, video.clip_stop // video.fps


def video_questions(video: MovingScene) -> list[dict]:
    """True {question, answer, kind} pairs about the clip, one per kind of question, lowercase as MSVD-QA's are."""
    mover = f"{video.mover_colour} {video.mover_kind}"
    out = [
        {"kind": "direction", "question": f"which way does the {mover} move?", "answer": video.direction},
        {"kind": "colour", "question": f"what color is the {video.mover_kind} that moves?", "answer": video.mover_colour},
        {"kind": "moving", "question": "what shape is moving across the screen?", "answer": video.mover_kind},
        {"kind": "count", "question": "how many shapes are shown?", "answer": NUMBER_EN[video.shape_count]},
    ]
    if video.still:
        out.append({"kind": "still colour", "question": f"what color is the {video.still.kind} that stays still?",
                    "answer": video.still.colour})
    return out


def encode_video(video: MovingScene, suffix: str, fourcc: str) -> bytes:
    """The clip's frames drawn and encoded with OpenCV's VideoWriter."""
    import cv2
    import numpy as np

    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    tmp = folder / f".shapes-video-{os.getpid()}-{random.getrandbits(48):012x}{suffix}"
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), video.fps, (video.width, video.height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {suffix} video with codec {fourcc!r}")
    try:
        for index in range(video.frame_count):
            rgb = np.asarray(draw_scene(video.scene_at(index)))
            writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV wants BGR
        writer.release()
        return tmp.read_bytes()
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)


def _youtube_clip_name(rng: random.Random) -> str:
    start = rng.randint(0, 200)
    return f"{''.join(rng.choice(YOUTUBE_ID_CHARS) for _ in range(11))}_{start}_{start + rng.randint(4, 15)}"


def _pick_questions(video: MovingScene, rng: random.Random, count: int) -> list[dict]:
    pool = video_questions(video)
    return rng.sample(pool, min(count, len(pool)))


def write_msvd_qa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 5) -> dict:
    """`scenes` videos per split, two or three questions each, in the MSVD-QA layout under out_dir."""
    out = Path(out_dir)
    _, _, _, suffix, fourcc = VIDEO_FORMATS["msvd_qa"]
    mapping_lines, summary = [], {"files": {}, "questions": {}, "videos": {}}
    video_id, question_id = 1, 0
    for split in SPLITS:
        rows = []
        for i in range(scenes):
            video = moving_scene(seed, "msvd_qa", split, i)
            rng = random.Random(f"shapes-world/{seed}/msvd_qa/{split}/{i}/questions")
            clip = _youtube_clip_name(rng)
            _write_bytes(out / "YouTubeClips" / f"{clip}{suffix}", encode_video(video, suffix, fourcc))
            mapping_lines.append(f"{clip} vid{video_id}")
            for qa in _pick_questions(video, rng, rng.randint(2, 3)):
                rows.append({"answer": qa["answer"], "id": question_id, "question": qa["question"], "video_id": video_id})
                question_id += 1
            video_id += 1
        path = out / f"{split}_qa.json"
        _write_json(path, rows)
        summary["files"][split] = str(path)
        summary["questions"][split] = len(rows)
        summary["videos"][split] = scenes
    mapping = out / "youtube_mapping.txt"
    _write_bytes(mapping, ("\n".join(mapping_lines) + "\n").encode())
    summary.update(mapping=str(mapping), video_root=str(out / "YouTubeClips"))
    return summary


def write_msrvtt_qa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 5) -> dict:
    """`scenes` videos per split, two or three questions each, in the MSRVTT-QA layout under out_dir."""
    out = Path(out_dir)
    _, _, _, suffix, fourcc = VIDEO_FORMATS["msrvtt_qa"]
    summary = {"files": {}, "questions": {}, "videos": {}}
    video_id, question_id = 0, 0  # MSR-VTT numbers videos video0 ... across its splits
    for split in SPLITS:
        rows = []
        for i in range(scenes):
            video = moving_scene(seed, "msrvtt_qa", split, i)
            rng = random.Random(f"shapes-world/{seed}/msrvtt_qa/{split}/{i}/questions")
            _write_bytes(out / "video" / f"video{video_id}{suffix}", encode_video(video, suffix, fourcc))
            category_id = rng.randrange(MSRVTT_CATEGORIES)
            for qa in _pick_questions(video, rng, rng.randint(2, 3)):
                rows.append({"answer": qa["answer"], "category_id": category_id, "id": question_id,
                             "question": qa["question"], "video_id": video_id})
                question_id += 1
            video_id += 1
        path = out / f"{split}_qa.json"
        _write_json(path, rows)
        summary["files"][split] = str(path)
        summary["questions"][split] = len(rows)
        summary["videos"][split] = scenes
    summary["video_root"] = str(out / "video")
    return summary


def ivqa_row(seed: int, split: str, index: int) -> dict:
    """The index-th iVQA row of a split: one question per clip, five annotators' answers."""
    video = moving_scene(seed, "ivqa", split, index)
    rng = random.Random(f"shapes-world/{seed}/ivqa/{split}/{index}/questions")
    video_id = "".join(rng.choice(YOUTUBE_ID_CHARS) for _ in range(11))
    qa = rng.choice(video_questions(video))
    dissent = rng.randint(0, IVQA_DISSENTING_ANSWERS)
    variants = [f"the {qa['answer']}", f"{qa['answer']} one"]
    answers = [qa["answer"]] * (5 - dissent) + [rng.choice(variants) for _ in range(dissent)]
    rng.shuffle(answers)
    start, end = clip_seconds(video)
    return {"video_id": video_id, "start": start, "end": end, "question": qa["question"],
            **{f"answer{n + 1}": answer for n, answer in enumerate(answers)}, "type": 0, "truth": qa["answer"]}


def write_ivqa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 5) -> dict:
    """`scenes` clips per split in the iVQA layout under out_dir."""
    out = Path(out_dir)
    _, _, _, suffix, fourcc = VIDEO_FORMATS["ivqa"]
    columns = ["video_id", "start", "end", "question", "answer1", "answer2", "answer3", "answer4", "answer5", "type"]
    summary = {"files": {}, "questions": {}}
    for split in SPLITS:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for i in range(scenes):
            row = ivqa_row(seed, split, i)
            video = moving_scene(seed, "ivqa", split, i)
            _write_bytes(out / "videos" / f"{row['video_id']}{suffix}", encode_video(video, suffix, fourcc))
            writer.writerow(row)
        path = out / f"{split}.csv"
        _write_bytes(path, text.getvalue().encode("utf-8"))
        summary["files"][split] = str(path)
        summary["questions"][split] = scenes
    summary["video_root"] = str(out / "videos")
    return summary


def write_video_qa(out_dir: str | os.PathLike, seed: int = 0, scenes: int = 5) -> dict:
    """All three layouts, under out_dir/msvd_qa, out_dir/msrvtt_qa and out_dir/ivqa."""
    out = Path(out_dir)
    return {
        "msvd_qa": write_msvd_qa(out / "msvd_qa", seed, scenes),
        "msrvtt_qa": write_msrvtt_qa(out / "msrvtt_qa", seed, scenes),
        "ivqa": write_ivqa(out / "ivqa", seed, scenes),
    }
