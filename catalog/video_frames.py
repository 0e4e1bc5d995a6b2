"""A video as InstructBLIP sees it: a few frames sampled uniformly from it, written once as JPEGs.

`sample_frames` takes the frame at the centre of each of `frames` equal segments of the video (frame
index floor((k + 0.5) * n / frames) for k = 0 .. frames - 1, n frames in all; of a clip's seconds where
one is given), writes them as folder/<k>.jpg with a sidecar saying which video file and which sampling
they came from, and reuses them on a later call as long as both are unchanged. Every file is written
whole (`_write_whole`), the sidecar last, so a run cut short leaves nothing a later one would trust.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

SAMPLING_RULE = "segment-centres"
# The sidecar that says which video and which sampling the JPEGs next to it came from.
SAMPLING_FILE = "sampling.json"


class UndecodableVideo(Exception):
    """A video OpenCV cannot open or read the sampled frames of; readers turn it into an AnnotationError."""


def segment_centres(first: int, stop: int, frames: int) -> list[int]:
    """Frame indices at the centres of `frames` equal segments of [first, stop)."""
    span = stop - first
    return [first + (2 * k + 1) * span // (2 * frames) for k in range(frames)]


def _video_identity(video_path: Path, frames: int, window: tuple[float, float] | None) -> dict:
    stat = video_path.stat()
    return {
        "video": str(video_path),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "frames": frames,
        "rule": SAMPLING_RULE,
        "window_seconds": list(window) if window else None,
    }


def _cached_frames(folder: Path, identity: dict) -> list[dict] | None:
    try:
        written = json.loads((folder / SAMPLING_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(written, dict) or written.get("identity") != identity:
        return None
    entries = written.get("frames")
    if not isinstance(entries, list) or len(entries) != identity["frames"]:
        return None
    if not all(isinstance(e, dict) and Path(str(e.get("path"))).is_file() for e in entries):
        return None
    return entries


def _write_whole(path: Path, data: bytes) -> None:
    """Write a file so that a reader sees no file (or the one before) or the whole new one: the bytes go to
    `.{name}.tmp-{pid}` beside it (the temporary name pipelines.manifest gives, which a resumed stage
    clears), renamed onto `path` when complete and removed when the write fails."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _frame_count(capture) -> int:
    import cv2

    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if count > 0:
        return count
    # Some containers (e.g. WebM) do not store a frame count: count by decoding.
    count = 0
    while capture.grab():
        count += 1
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return count


def _read_frames(capture, indices: list[int]) -> tuple[list, int]:
    """The frames at `indices` (sorted), reading forward from the first; and how far the stream went."""
    import cv2

    position = indices[0]
    if position > 0:
        capture.set(cv2.CAP_PROP_POS_FRAMES, position)
    images = []
    for index in indices:
        while position < index:
            if not capture.grab():
                return images, position
            position += 1
        ok, image = capture.read()
        if not ok or image is None:
            return images, position
        position += 1
        images.append(image)
    return images, position


def _decode_frames(video_path: Path, frames: int, window: tuple[float, float] | None) -> list:
    import cv2

    capture = cv2.VideoCapture(str(video_path))
    try:
        if not capture.isOpened():
            raise UndecodableVideo("OpenCV cannot open it")
        count = _frame_count(capture)
        if count <= 0:
            raise UndecodableVideo("it has no frames OpenCV can read")
        first, stop = 0, count
        if window is not None:
            fps = capture.get(cv2.CAP_PROP_FPS)
            if not fps or fps <= 0:
                raise UndecodableVideo("its frame rate is unknown, so the clip's start/end seconds cannot be found")
            first, stop = round(window[0] * fps), min(count, round(window[1] * fps))
            if first >= stop:
                raise UndecodableVideo(
                    f"the clip {window[0]:g}s-{window[1]:g}s holds no frame of a {count / fps:.2f}s video"
                )
        indices = segment_centres(first, stop, frames)
        images, reached = _read_frames(capture, indices)
        if len(images) < frames and reached > first:
            # The container over-reported its frame count: sample what is really there.
            capture.release()
            capture = cv2.VideoCapture(str(video_path))
            images, _ = _read_frames(capture, segment_centres(first, reached, frames))
        if len(images) < frames:
            raise UndecodableVideo(f"decoding stopped at frame {reached} of {count}")
        return images
    finally:
        capture.release()


def sample_frames(
    video_path: str | os.PathLike,
    folder: str | os.PathLike,
    frames: int = 4,
    window: tuple[float, float] | None = None,
) -> list[dict]:
    """`frames` frames at the centres of equal segments of the video (of its `window` seconds, if given),
    written as folder/<k>.jpg; returns their {"path", "width", "height"}. Frames written before for
    the same video file and sampling are reused without decoding."""
    import cv2

    if frames < 1:
        raise ValueError(f"frames is {frames}; sample at least one frame per video")
    video_path = Path(video_path)
    folder = Path(os.path.abspath(folder))
    identity = _video_identity(video_path, frames, window)
    cached = _cached_frames(folder, identity)
    if cached is not None:
        return [dict(entry) for entry in cached]

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, image in enumerate(_decode_frames(video_path, frames, window)):
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise UndecodableVideo(f"frame {k} could not be encoded as JPEG")
        path = folder / f"{k}.jpg"
        _write_whole(path, jpeg.tobytes())
        height, width = image.shape[:2]
        entries.append({"path": str(path), "width": int(width), "height": int(height)})
    # Written last, so a run cut short leaves no sidecar and the next run decodes again.
    _write_whole(folder / SAMPLING_FILE, json.dumps({"identity": identity, "frames": entries}).encode())
    return [dict(entry) for entry in entries]
