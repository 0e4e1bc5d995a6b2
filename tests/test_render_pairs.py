"""`loom render` of a pairs entry (an ingest output) at any size: planned from the shard indexes' footers, then
read, rendered and written part by part by tasks of their own, into the files one render of every record
would write; killed, it resumes from the parts it finished."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from catalog.adapters import AnnotationError
from catalog.adapters.pairs import read_pairs
from jobs.render import run_render
from pipelines.ingest.shards import read_pairs_index, write_pairs_shard
from pipelines.manifest import StageRecord
from pipelines.render import read_render_output, render_table, selected
from pipelines.render_pairs import plan_parts
from pipelines.shapes_world.draw import draw_scene, encode_jpeg
from pipelines.shapes_world.scenes import captions, make_scene

REPO = Path(__file__).resolve().parents[1]
SHARD_ROWS = (7, 5, 9, 4)  # 25 pairs over four shards
quiet = lambda *_: None  # noqa: E731


def write_ingest_output(folder: Path, shard_rows, seed: int = 0, draw: bool = True) -> Path:
    """An ingest output as `loom ingest` leaves it: pairs shards (tar + parquet index) of shapes-world scenes,
    every fourth captioned in Chinese, and its manifest. Without `draw`, every pair shares one drawn image."""
    shared = None
    n = 0
    for index, rows in enumerate(shard_rows):
        pairs, images = [], {}
        for _ in range(rows):
            rng = random.Random(f"render-pairs/{seed}/{n}")
            scene = make_scene(rng)
            lang = "zh" if n % 4 == 3 else "en"
            key = f"{index:05d}{n:04d}"
            if draw or shared is None:
                shared = encode_jpeg(draw_scene(scene))
            images[key] = shared
            pairs.append({"key": key, "row_id": f"urls.parquet/{n}", "source": "shapes", "url": f"http://127.0.0.1/{n}.jpg",
                          "caption": captions(scene, lang, rng, count=1)[0], "lang": lang, "width": scene.width,
                          "height": scene.height, "original_width": scene.width, "original_height": scene.height,
                          "sha256": hashlib.sha256(images[key]).hexdigest(), "phash": f"{n:016x}"})
            n += 1
        write_pairs_shard(str(folder / "shards"), index, pairs, images)
    record = StageRecord("ingest", {"fixture": seed, "shards": list(shard_rows)})
    record.rows_in = record.rows_out = n
    record.finish(folder)
    return folder


@pytest.fixture(scope="module")
def ingest(tmp_path_factory):
    return write_ingest_output(tmp_path_factory.mktemp("pairs") / "ingest", SHARD_ROWS)


def pairs_config(ingest, **settings):
    entry = {"adapter": "pairs", "path": str(ingest), **settings.pop("entry", {})}
    return {"render": {"datasets": [entry], "seed": 7, **settings}}


def rows_of(out: Path, manifest: dict) -> list[dict]:
    return [row for name in manifest["files"] for row in pq.read_table(out / "render" / name).to_pylist()]


def one_render(ingest, limit=None) -> list[dict]:
    """The reference: every record read into one list and rendered at once, as one task used to, each
    asked for brevity as the entry's share over all its records decides."""
    from jobs.render import brevity_draw, entry_brevity, render_settings

    records = read_pairs(str(ingest), "train")[:limit]
    cfg = render_settings(pairs_config(ingest))
    draw = brevity_draw(0, cfg["datasets"][0], entry_brevity(0, cfg["datasets"][0], cfg), len(records), 7)
    return render_table(records, 7, brevity=draw.labels(0, len(records))).to_pylist()


def test_the_adapter_reads_the_shard_indexes_in_order_with_their_tars(ingest):
    records = read_pairs(str(ingest))
    index = read_pairs_index(str(ingest)).to_pylist()
    assert [r["id"] for r in records] == [f"pairs:{row['key']}" for row in index] and len(records) == 25
    assert [r["image"]["shard"] for r in records] == [row["shard"] for row in index]
    assert records[3]["lang"] == "zh" and records[3]["caption"] == index[3]["caption"]
    assert read_pairs(str(ingest), limit=9) == records[:9]  # reads two shards, not four


def test_the_plan_cuts_the_stream_of_pairs_into_parts_across_shard_boundaries():
    shards = [("a", 7), ("b", 5), ("c", 9)]
    assert plan_parts(shards, 6) == [[("a", 0, 6)], [("a", 6, 7), ("b", 0, 5)], [("c", 0, 6)], [("c", 6, 9)]]
    assert plan_parts(shards, 6, limit=13) == [[("a", 0, 6)], [("a", 6, 7), ("b", 0, 5)], [("c", 0, 1)]]
    assert plan_parts(shards, 100, limit=8) == [[("a", 0, 7), ("b", 0, 1)]]
    assert plan_parts([("a", 0)], 6) == [[]]  # nothing kept: one empty file says so


def test_a_pairs_entry_over_several_shards_renders_into_parts_that_add_up_to_one_render(ingest, tmp_path):
    manifest = run_render(pairs_config(ingest, part_records=6, ray="never"), tmp_path, log=quiet)
    assert manifest["files"] == [f"instructions/00-pairs-train-{n:05d}.parquet" for n in range(5)]
    assert rows_of(tmp_path, manifest) == one_render(ingest)  # same ids, templates, messages, order
    assert manifest["rows_in"] == manifest["rows_out"] == 25
    assert [d["records"] for d in manifest["datasets"].values()] == [6, 6, 6, 6, 1]
    assert sum(sum(d["languages"].values()) for d in manifest["datasets"].values()) == 25
    assert sum(manifest["templates"].values()) == 25 and not manifest["on_ray"]


def test_a_pairs_entry_asks_for_brevity_exactly_over_all_its_parts(ingest, tmp_path):
    manifest = run_render(pairs_config(ingest, part_records=4, ray="never"), tmp_path, log=quiet)
    report = manifest["brevity"]["00-pairs-train"]
    assert report["share_asked"] == {"short": round(9 / 13, 6), "long": 0.0}  # captions: the paper's 9 of 13
    assert report["short"] == report["asked"]["short"] == round(9 / 13 * 25) == 17 and report["records"] == 25
    assert sum(d["brevity"].get("short", 0) for d in manifest["datasets"].values()) == 17


def test_limit_takes_the_first_pairs_across_a_shard_boundary(ingest, tmp_path):
    manifest = run_render(pairs_config(ingest, part_records=4, ray="never", entry={"limit": 10}), tmp_path, log=quiet)
    rows = rows_of(tmp_path, manifest)
    assert rows == one_render(ingest, limit=10) and manifest["rows_in"] == manifest["rows_out"] == 10
    assert {row["images"][0]["shard"].rsplit("/", 1)[1] for row in rows} == {"pairs-00000.tar", "pairs-00001.tar"}
    assert [d["records"] for d in manifest["datasets"].values()] == [4, 4, 2]


def test_each_part_done_is_logged(ingest, tmp_path):
    lines = []
    run_render(pairs_config(ingest, part_records=10, ray="never"), tmp_path, log=lines.append)
    assert [line for line in lines if "part" in line] == [f"render: pairs (train): part {k}/3" for k in (1, 2, 3)]


def test_no_task_holds_more_pairs_than_a_part_and_parts_follow_the_shards(ingest, tmp_path, monkeypatch):
    import catalog.adapters.pairs
    import pipelines.ingest.shards
    import pipelines.render_pairs

    def whole_entry(*_, **__):
        raise AssertionError("a pairs entry was read whole")

    monkeypatch.setattr(catalog.adapters.pairs, "read_pairs", whole_entry)
    monkeypatch.setattr(pipelines.ingest.shards, "read_pairs_index", whole_entry)
    held = []
    reader = pipelines.render_pairs.read_part
    monkeypatch.setattr(pipelines.render_pairs, "read_part",
                        lambda part, split: held.append(len(records := reader(part, split))) or records)
    run_render(pairs_config(ingest, part_records=4, ray="never"), tmp_path / "four", log=quiet)
    assert held == [4, 4, 4, 4, 4, 4, 1]
    bigger = write_ingest_output(tmp_path / "bigger", SHARD_ROWS * 3, draw=False)
    manifest = run_render(pairs_config(bigger, part_records=4, ray="never"), tmp_path / "twelve", log=quiet)
    assert len(manifest["files"]) == 19 and manifest["rows_out"] == 75  # three times the shards: ceil(75 / 4) parts


def test_on_ray_the_driver_holds_the_plan_only_and_writes_the_bytes_this_process_writes(ingest, tmp_path, monkeypatch):
    import catalog.adapters.pairs
    import pipelines.ingest.shards
    import pipelines.render_pairs

    here = run_render(pairs_config(ingest, part_records=6, ray="never"), tmp_path / "here", log=quiet)

    def in_the_driver(*_, **__):
        raise AssertionError("pairs records built in the driver")

    # the workers import these modules afresh: only the driver's copies refuse
    for module, name in ((catalog.adapters.pairs, "read_pairs"), (catalog.adapters.pairs, "pairs_records"),
                         (catalog.adapters.pairs, "read_shard_index"), (pipelines.ingest.shards, "read_pairs_index"),
                         (pipelines.render_pairs, "read_part"), (pipelines.render_pairs, "pairs_records")):
        monkeypatch.setattr(module, name, in_the_driver)
    lines = []
    on_ray = run_render(pairs_config(ingest, part_records=6, ray="always"), tmp_path / "ray", log=lines.append)
    assert on_ray["on_ray"] and on_ray["files"] == here["files"]
    for name in here["files"]:
        assert (tmp_path / "ray" / "render" / name).read_bytes() == (tmp_path / "here" / "render" / name).read_bytes()
    assert {k: v for k, v in on_ray.items() if k in ("datasets", "templates", "rows_in", "rows_out")} == \
        {k: v for k, v in here.items() if k in ("datasets", "templates", "rows_in", "rows_out")}
    assert sorted(line for line in lines if "part" in line) == [f"render: pairs (train): part {k}/5" for k in range(1, 6)]


def test_an_unreadable_shard_index_is_named_before_any_work(ingest, tmp_path):
    import shutil

    broken = tmp_path / "ingest"
    shutil.copytree(ingest, broken)
    (broken / "shards" / "pairs-00002.parquet").write_bytes(b"PAR1 not a parquet footer")
    with pytest.raises(AnnotationError, match=r"pairs shard index .*/shards/pairs-00002\.parquet: unreadable"):
        run_render(pairs_config(broken, ray="never"), tmp_path, log=quiet)
    assert not (tmp_path / "render").exists()


def test_a_render_killed_with_sigkill_resumes_from_its_written_parts_to_the_same_bytes(tmp_path):
    ingest = write_ingest_output(tmp_path / "ingest", (100,) * 60, draw=False)  # 6000 pairs: 600 parts of 10
    config = tmp_path / "render.yaml"
    config.write_text(f"render: {{datasets: [{{adapter: pairs, path: '{ingest}'}}], part_records: 10, ray: never}}\n")
    killed = tmp_path / "killed"
    instructions = killed / "render" / "instructions"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}
    job = subprocess.Popen([sys.executable, "-m", "jobs.cli", "render", str(config), "--out", str(killed)],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (instructions.exists() and len(list(instructions.glob("00-pairs-*.parquet"))) >= 10):
        assert job.poll() is None and time.time() < deadline, job.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.wait()
    job.stderr.close()
    written = {p.name: p.stat().st_mtime_ns for p in instructions.glob("00-pairs-*.parquet")}
    assert 10 <= len(written) < 600 and not (killed / "render" / "manifest.json").exists()

    lines = []
    resumed = run_render({"render": {"datasets": [{"adapter": "pairs", "path": str(ingest)}], "part_records": 10,
                                     "ray": "never"}}, killed, log=lines.append)
    whole = run_render({"render": {"datasets": [{"adapter": "pairs", "path": str(ingest)}], "part_records": 10,
                                   "ray": "never"}}, tmp_path / "whole", log=quiet)
    assert resumed["files"] == whole["files"] and len(whole["files"]) == 600
    for name in whole["files"]:
        assert (killed / "render" / name).read_bytes() == (tmp_path / "whole" / "render" / name).read_bytes()
    assert {k: resumed[k] for k in ("datasets", "templates", "rows_in", "rows_out")} == \
        {k: whole[k] for k in ("datasets", "templates", "rows_in", "rows_out")}
    assert sum("kept" in line for line in lines) == len(written)  # finished parts are counted, not rendered again
    assert all((instructions / name).stat().st_mtime_ns == mtime for name, mtime in written.items())
    assert not [p for p in instructions.iterdir() if ".tmp" in p.name]  # what the kill cut short is gone


def test_the_render_output_is_read_with_the_filter_pushed_into_the_files(ingest, tmp_path):
    from pipelines.shapes_world.formats.vizwiz import write_vizwiz

    vizwiz = write_vizwiz(tmp_path / "vizwiz", seed=5, scenes=6)
    datasets = [{"adapter": "pairs", "path": str(ingest), "limit": 8}]
    datasets += [{"card": "vizwiz", "annotation_file": vizwiz["files"][split],
                  "image_root": vizwiz["image_folders"][split], "split": split} for split in ("train", "val")]
    assert read_render_output(tmp_path / "render") is None  # not rendered yet
    run_render({"render": {"datasets": datasets, "part_records": 3}}, tmp_path, log=quiet)
    every = read_render_output(tmp_path / "render")
    assert len(every) == 8 + 6 + 6

    held_out = read_render_output(tmp_path / "render", split="val", datasets=["vizwiz"], task="vqa")
    assert held_out == [r for r in every if selected(r, ["vizwiz"], "val") and r["task"] == "vqa"] and len(held_out) == 6
    pairs = read_render_output(tmp_path / "render", datasets=["pairs"])  # a prefix: 'pairs' takes 'pairs/shapes'
    assert pairs == [r for r in every if r["dataset"] == "pairs/shapes"] and len(pairs) == 8
    answers = read_render_output(tmp_path / "render", split="train", task="vqa", columns=["id", "question_type"])
    assert answers == [{"id": r["id"], "question_type": r["question_type"]} for r in every
                       if r["split"] == "train" and r["task"] == "vqa"]
    assert read_render_output(tmp_path / "render", datasets=[]) == []
    assert read_render_output(tmp_path / "render", split="test") == []


def test_the_pairs_adapter_sits_in_the_bottom_layer():
    """catalog/ reads the pairs contract with pyarrow alone: nothing of pipelines/ or jobs/."""
    blocker = ("import importlib.abc, sys\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in {'pipelines', 'jobs', 'ray', 'torch'}:\n"
               "            raise ModuleNotFoundError('blocked: ' + name, name=name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "import catalog.adapters.pairs\n")
    done = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
