"""MSVD-QA, MSRVTT-QA and iVQA: shapes-world videos read back through catalog.adapters.video_qa."""

from __future__ import annotations

import functools
import importlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalog.adapters import AnnotationError
from catalog import video_frames
from catalog.adapters.video_qa import read_ivqa, read_msrvtt_qa, read_msvd_qa
from catalog.video_frames import sample_frames, segment_centres
from catalog.cards import get_card
from pipelines.shapes_world.draw import BACKGROUND_RGB, COLOUR_RGB, nearest_colour_name
from pipelines.shapes_world.formats.video_qa import ivqa_row, moving_scene, write_video_qa
from annotation_files import broken_copy

SEED = 5
SCENES = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video_qa")
    write_video_qa(out, seed=SEED, scenes=SCENES)
    return out


def msvd(root: Path, split: str, frames_dir: Path, annotation: Path | None = None, **options) -> list[dict]:
    return read_msvd_qa(annotation or root / "msvd_qa" / f"{split}_qa.json", root / "msvd_qa" / "YouTubeClips", split,
                        frames_dir, root / "msvd_qa" / "youtube_mapping.txt", **options)


def msrvtt(root: Path, split: str, frames_dir: Path, annotation: Path | None = None) -> list[dict]:
    return read_msrvtt_qa(annotation or root / "msrvtt_qa" / f"{split}_qa.json", root / "msrvtt_qa" / "video", split, frames_dir)


def ivqa(root: Path, split: str, frames_dir: Path, annotation: Path | None = None, **options) -> list[dict]:
    return read_ivqa(annotation or root / "ivqa" / f"{split}.csv", root / "ivqa" / "videos", split, frames_dir, **options)


def pixel(frame: dict, x: float, y: float) -> str:
    with Image.open(frame["path"]) as image:
        return nearest_colour_name(image.convert("RGB").getpixel((int(x), int(y))))


@functools.lru_cache(maxsize=None)
def nearest_colour_map(path: str) -> tuple[list[str], np.ndarray]:
    """Per pixel, the index of the nearest named colour (shape or background), as nearest_colour_name picks."""
    names = list(COLOUR_RGB) + [f"background:{name}" for name in BACKGROUND_RGB]
    palette = np.array(list(COLOUR_RGB.values()) + list(BACKGROUND_RGB.values()), dtype=np.int32)
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    distances = ((rgb[:, :, None, :] - palette[None, None]) ** 2).sum(axis=-1)
    return names, distances.argmin(axis=-1)


def colour_centre_x(frame: dict, colour: str) -> float | None:
    """Mean x of the pixels nearest to `colour`: where that shape is in the frame, read from pixels alone."""
    names, nearest = nearest_colour_map(frame["path"])
    _, xs = np.nonzero(nearest == names.index(colour))
    return float(xs.mean()) if len(xs) > 30 else None


def video_of(dataset: str, split: str, record_video_index: int):
    return moving_scene(SEED, dataset, split, record_video_index)


# ---------------------------------------------------------------- the sampler


def test_sampling_takes_the_centre_frame_of_equal_segments():
    assert segment_centres(0, 12, 4) == [1, 4, 7, 10]
    assert segment_centres(8, 24, 4) == [10, 14, 18, 22]
    assert segment_centres(0, 3, 4) == [0, 1, 1, 2]  # a clip shorter than `frames` repeats frames


def test_sampled_frames_show_the_drawn_frames_at_those_positions(world, tmp_path):
    video = video_of("msrvtt_qa", "train", 0)
    entries = sample_frames(world / "msrvtt_qa" / "video" / "video0.mp4", tmp_path / "video0", frames=4)
    assert [Path(e["path"]).name for e in entries] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    for entry, index in zip(entries, segment_centres(0, video.frame_count, 4)):
        mover = video.mover_at(index)
        assert (entry["width"], entry["height"]) == (video.width, video.height)
        assert pixel(entry, *mover.centre) == video.mover_colour
        if video.still:
            assert pixel(entry, *video.still.centre) == video.still.colour


def test_frames_written_before_are_reused_without_decoding(world, tmp_path, monkeypatch):
    first = msrvtt(world, "val", tmp_path)
    written = {f["path"]: Path(f["path"]).read_bytes() for r in first for f in r["frames"]}

    def no_decoding(*args):
        raise AssertionError("decoded a video whose frames were already written")

    monkeypatch.setattr(video_frames, "_decode_frames", no_decoding)
    again = msrvtt(world, "val", tmp_path)
    assert again == first
    assert all(Path(path).read_bytes() == data for path, data in written.items())
    assert not list(tmp_path.rglob(".*.tmp-*"))


def test_a_frame_that_cannot_be_written_leaves_no_temporary_file_and_no_sidecar(world, tmp_path):
    frames = tmp_path / "frames"
    (frames / "2.jpg").mkdir(parents=True)  # a folder where the third frame goes: its rename fails
    with pytest.raises(IsADirectoryError):
        sample_frames(world / "msrvtt_qa" / "video" / "video0.mp4", frames, frames=4)
    assert sorted(p.name for p in frames.iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]  # no .2.jpg.tmp-*, no sampling.json


def test_a_changed_video_or_frame_count_is_sampled_again(world, tmp_path):
    source = world / "msrvtt_qa" / "video" / "video1.mp4"
    video = tmp_path / "video1.mp4"
    shutil.copy(source, video)
    assert len(sample_frames(video, tmp_path / "frames", frames=4)) == 4
    eight = sample_frames(video, tmp_path / "frames", frames=8)
    assert len(eight) == 8 and all(Path(e["path"]).is_file() for e in eight)
    shutil.copy(world / "msrvtt_qa" / "video" / "video2.mp4", video)  # same name, other content
    moved = sample_frames(video, tmp_path / "frames", frames=8)
    other = video_of("msrvtt_qa", "train", 2)
    mover = other.mover_at(segment_centres(0, other.frame_count, 8)[0])
    assert pixel(moved[0], *mover.centre) == other.mover_colour


# ---------------------------------------------------------------- MSVD-QA


def test_msvd_gives_one_record_per_question_with_four_frames_of_its_clip(world, tmp_path):
    native = json.loads((world / "msvd_qa" / "val_qa.json").read_text())
    clips = dict(reversed(line.split()) for line in (world / "msvd_qa" / "youtube_mapping.txt").read_text().splitlines())
    records = msvd(world, "val", tmp_path)
    assert len(records) == len(native) >= 2 * SCENES
    for record, row in zip(records, native):
        assert record["id"] == f"msvd_qa:val:{row['id']}"
        assert (record["dataset"], record["task"], record["split"], record["lang"]) == ("msvd_qa", "video_qa", "val", "en")
        assert (record["question"], record["answer"], record["answers"]) == (row["question"], row["answer"], [row["answer"]])
        assert "image" not in record and len(record["frames"]) == 4
        clip = clips[f"vid{row['video_id']}"]
        assert [f["path"] for f in record["frames"]] == [str(tmp_path / "msvd_qa" / clip / f"{k}.jpg") for k in range(4)]
        assert all((f["width"], f["height"]) == (96, 96) for f in record["frames"])


def test_msvd_direction_answers_match_where_the_shape_is_in_the_frames(world, tmp_path):
    checked = 0
    for split in ("train", "val", "test"):
        for record in msvd(world, split, tmp_path):
            if not record["question"].startswith("which way does the "):
                continue
            colour = record["question"].split()[4]
            first, last = colour_centre_x(record["frames"][0], colour), colour_centre_x(record["frames"][-1], colour)
            width = record["frames"][0]["width"]
            if record["answer"] == "right":
                assert first < width / 2 < last
            else:
                assert record["answer"] == "left" and first > width / 2 > last
            checked += 1
    assert checked >= 2


def test_msvd_reads_the_authors_renamed_vid_files_too(world, tmp_path):
    renamed = tmp_path / "video"
    renamed.mkdir()
    for line in (world / "msvd_qa" / "youtube_mapping.txt").read_text().splitlines():
        clip, vid = line.split()
        shutil.copy(world / "msvd_qa" / "YouTubeClips" / f"{clip}.avi", renamed / f"{vid}.avi")
    records = read_msvd_qa(world / "msvd_qa" / "test_qa.json", renamed, "test", tmp_path / "frames",
                           world / "msvd_qa" / "youtube_mapping.txt")
    assert [r["answer"] for r in records] == [r["answer"] for r in msvd(world, "test", tmp_path / "frames2")]


def test_msvd_video_id_missing_from_the_mapping_is_named(world, tmp_path):
    broken = broken_copy(world / "msvd_qa" / "train_qa.json", tmp_path, lambda data: data[2].update(video_id=4000))
    unmapped = r"train_qa\.json: \[2\]: video_id 4000 has no line 'vid4000' in .*youtube_mapping\.txt"
    with pytest.raises(AnnotationError, match=unmapped):
        msvd(world, "train", tmp_path / "frames", broken)


def test_msvd_malformed_mapping_line_is_named(world, tmp_path):
    mapping = tmp_path / "youtube_mapping.txt"
    lines = (world / "msvd_qa" / "youtube_mapping.txt").read_text().splitlines()
    lines[3] = lines[3].replace(" vid", " video")
    mapping.write_text("\n".join(lines))
    with pytest.raises(AnnotationError, match=r"youtube_mapping\.txt: line 4: .* is not '<clip name> vid<N>'"):
        read_msvd_qa(world / "msvd_qa" / "val_qa.json", world / "msvd_qa" / "YouTubeClips", "val", tmp_path, mapping)


def test_msvd_missing_field_names_file_row_and_field(world, tmp_path):
    broken = broken_copy(world / "msvd_qa" / "val_qa.json", tmp_path, lambda data: data[3].pop("video_id"))
    with pytest.raises(AnnotationError, match=r"val_qa\.json: \[3\]: missing field 'video_id'"):
        msvd(world, "val", tmp_path / "frames", broken)


def test_msvd_file_that_is_not_a_list_or_not_json_is_named(world, tmp_path):
    wrapped = tmp_path / "test_qa.json"
    wrapped.write_text('{"questions": []}')
    with pytest.raises(AnnotationError, match=r"test_qa\.json: top level is an object; expected a list"):
        msvd(world, "test", tmp_path / "frames", wrapped)
    wrapped.write_text('[{"answer": "left",\n')
    with pytest.raises(AnnotationError, match=r"test_qa\.json: not valid JSON .*line 2"):
        msvd(world, "test", tmp_path / "frames", wrapped)


# ---------------------------------------------------------------- MSRVTT-QA


def test_msrvtt_keeps_category_id_and_reads_video_N_mp4(world, tmp_path):
    native = json.loads((world / "msrvtt_qa" / "test_qa.json").read_text())
    records = msrvtt(world, "test", tmp_path)
    assert len(records) == len(native)
    for record, row in zip(records, native):
        assert record["id"] == f"msrvtt_qa:test:{row['id']}"
        assert record["category_id"] == row["category_id"] and isinstance(record["category_id"], int)
        assert Path(record["frames"][0]["path"]).parent == tmp_path / "msrvtt_qa" / f"video{row['video_id']}"
        assert all((f["width"], f["height"]) == (96, 72) for f in record["frames"])


def test_msrvtt_colour_and_count_answers_are_what_the_frames_show(world, tmp_path):
    checked = 0
    for split in ("train", "val", "test"):
        native = json.loads((world / "msrvtt_qa" / f"{split}_qa.json").read_text())
        first_video = min(row["video_id"] for row in native)
        for record, row in zip(msrvtt(world, split, tmp_path), native):
            video = video_of("msrvtt_qa", split, row["video_id"] - first_video)
            if record["question"].startswith("what color is the "):
                shape = video.mover_at(segment_centres(0, video.frame_count, 4)[1])
                if "stays still" in record["question"]:
                    shape = video.still
                assert record["answer"] == shape.colour == pixel(record["frames"][1], *shape.centre)
                checked += 1
            if record["question"] == "how many shapes are shown?":
                colours = {c for c in COLOUR_RGB if colour_centre_x(record["frames"][2], c) is not None}
                assert record["answer"] == {1: "one", 2: "two"}[len(colours)]
                checked += 1
    assert checked >= 2


def test_msrvtt_wrong_type_names_file_row_and_field(world, tmp_path):
    broken = broken_copy(world / "msrvtt_qa" / "train_qa.json", tmp_path, lambda data: data[1].update(category_id="sports"))
    with pytest.raises(AnnotationError, match=r"train_qa\.json: \[1\]: field 'category_id' is a string .*expected an integer"):
        msrvtt(world, "train", tmp_path / "frames", broken)


def test_msrvtt_question_whose_video_is_missing_is_named(world, tmp_path):
    broken = broken_copy(world / "msrvtt_qa" / "val_qa.json", tmp_path, lambda data: data[4].update(video_id=9999))
    with pytest.raises(AnnotationError, match=r"val_qa\.json: \[4\]: video_id 9999, but there is no video at .*video9999\.mp4"):
        msrvtt(world, "val", tmp_path / "frames", broken)


def test_msrvtt_video_that_cannot_be_decoded_is_named(world, tmp_path):
    videos = tmp_path / "video"
    shutil.copytree(world / "msrvtt_qa" / "video", videos)
    native = json.loads((world / "msrvtt_qa" / "val_qa.json").read_text())
    (videos / f"video{native[0]['video_id']}.mp4").write_bytes(b"<html>not a video</html>")
    with pytest.raises(AnnotationError, match=r"val_qa\.json: \[0\]: video_id \d+: .*video\d+\.mp4 cannot be decoded"):
        read_msrvtt_qa(world / "msrvtt_qa" / "val_qa.json", videos, "val", tmp_path / "frames")


# ---------------------------------------------------------------- iVQA


def test_ivqa_keeps_the_five_answers_and_trains_on_the_most_common(world, tmp_path):
    for split in ("train", "val", "test"):
        records = ivqa(world, split, tmp_path)
        assert len(records) == SCENES
        for index, record in enumerate(records):
            row = ivqa_row(SEED, split, index)
            assert record["id"] == f"ivqa:{split}:{row['video_id']}_{row['start']}_{row['end']}"
            assert record["question"] == row["question"]
            assert record["answers"] == [row[f"answer{n}"] for n in range(1, 6)]
            assert record["answer"] == Counter(record["answers"]).most_common(1)[0][0] == row["truth"]


def test_ivqa_frames_come_from_the_clip_between_start_and_end(world, tmp_path):
    for index, record in enumerate(ivqa(world, "val", tmp_path)):
        video = video_of("ivqa", "val", index)
        indices = segment_centres(video.clip_first, video.clip_stop, 4)
        for frame, frame_index in zip(record["frames"], indices):
            assert pixel(frame, *video.mover_at(frame_index).centre) == video.mover_colour
        first, last = (colour_centre_x(record["frames"][k], video.mover_colour) for k in (0, 3))
        assert (first < last) == (video.direction == "right")


def test_ivqa_without_cutting_samples_the_whole_video(world, tmp_path):
    record = ivqa(world, "train", tmp_path, cut_to_clip=False)[0]
    video = video_of("ivqa", "train", 0)
    assert record["id"] == f"ivqa:train:{ivqa_row(SEED, 'train', 0)['video_id']}"
    # The whole video starts with empty background before the clip: nothing coloured in frame 0.
    assert segment_centres(0, video.frame_count, 4)[0] < video.clip_first
    assert all(colour_centre_x(record["frames"][0], c) is None for c in COLOUR_RGB)


def _edit_csv(source: Path, tmp_path: Path, edit) -> Path:
    lines = source.read_text().splitlines()
    edit(lines)
    target = tmp_path / source.name
    target.write_text("\n".join(lines) + "\n")
    return target


def test_ivqa_missing_column_is_named(world, tmp_path):
    def rename_column(lines):
        lines[0] = lines[0].replace("answer4", "answer_4")

    broken = _edit_csv(world / "ivqa" / "train.csv", tmp_path, rename_column)
    with pytest.raises(AnnotationError, match=r"train\.csv: header: missing column 'answer4'"):
        ivqa(world, "train", tmp_path / "frames", broken)


def test_ivqa_row_without_answers_or_with_a_bad_clip_is_named(world, tmp_path):
    def no_answers(lines):
        cells = lines[3].split(",")
        lines[3] = ",".join(cells[:4] + [""] * 5 + cells[9:])

    broken = _edit_csv(world / "ivqa" / "val.csv", tmp_path, no_answers)
    with pytest.raises(AnnotationError, match=r"val\.csv: line 4: columns answer1\.\.answer5 are all empty"):
        ivqa(world, "val", tmp_path / "frames", broken)

    def backwards(lines):
        cells = lines[2].split(",")
        lines[2] = ",".join([cells[0], "5", "2", *cells[3:]])

    broken = _edit_csv(world / "ivqa" / "val.csv", tmp_path, backwards)
    with pytest.raises(AnnotationError, match=r"val\.csv: line 3: clip ends \(2\) before it starts \(5\)"):
        ivqa(world, "val", tmp_path / "frames", broken)

    def past_the_end(lines):
        cells = lines[1].split(",")
        lines[1] = ",".join([cells[0], "60", "70", *cells[3:]])

    broken = _edit_csv(world / "ivqa" / "val.csv", tmp_path, past_the_end)
    beyond = r"val\.csv: line 2: video_id .* \(clip 60s-70s\): .* cannot be decoded \(the clip 60s-70s holds no frame"
    with pytest.raises(AnnotationError, match=beyond):
        ivqa(world, "val", tmp_path / "frames", broken)


def test_ivqa_question_whose_video_is_missing_is_named(world, tmp_path):
    broken = _edit_csv(world / "ivqa" / "test.csv", tmp_path, lambda lines: lines.__setitem__(5, "zzzzzzzzzzz" + lines[5][11:]))
    missing = r"test\.csv: line 6: video_id 'zzzzzzzzzzz' .*but there is no video at .*zzzzzzzzzzz\.mp4"
    with pytest.raises(AnnotationError, match=missing):
        ivqa(world, "test", tmp_path / "frames", broken)


# ---------------------------------------------------------------- cards


@pytest.mark.parametrize("card, reader", [("msvd_qa", read_msvd_qa), ("msrvtt_qa", read_msrvtt_qa), ("ivqa", read_ivqa)])
def test_video_qa_cards_name_these_adapters(card, reader):
    module, _, attribute = get_card(card)["adapter"].rpartition(".")
    assert getattr(importlib.import_module(module), attribute) is reader
