"""Portable instruction records: a run folder and its datasets' image folders can move. References to files in
the run folder (ingest's pairs shards, the images render embeds) are relative to it; a dataset's images are
{root: NAME, path} under a folder the render manifest names, which train.image_roots re-points."""
from __future__ import annotations

import io
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs.pack import run_pack
from jobs.render import run_render
from jobs.schema import Train
from pipelines.shapes_world.formats.okvqa import write_okvqa
from pipelines.shapes_world.formats.vizwiz import write_vizwiz
from test_render_pairs import write_ingest_output
from vlm.data import PackedDataset

quiet = lambda *_: None  # noqa: E731


def jpeg(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def all_images(dataset: PackedDataset) -> torch.Tensor:
    """Every image reference of every packed row, through the train data path's image processor."""
    references = [ref for shard in range(len(dataset.shards)) for row in range(dataset.rows_per_shard[shard])
                  for ref in dataset._shard(shard).images[row] or []]
    return dataset.images.stack(references)


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A run (ingest pairs, a card dataset read from its own folder, another whose folder is in the run folder,
    a parquet with embedded image bytes) rendered and packed, its pixels read; then the run folder and the
    outside dataset's folder moved elsewhere."""
    home = tmp_path_factory.mktemp("portable")
    okvqa = write_okvqa(home / "datasets" / "okvqa", seed=1, scenes=4)["train2014"]
    run = home / "run"
    write_ingest_output(run / "ingest", (3, 2))
    vizwiz = write_vizwiz(run / "demo" / "vizwiz", seed=1, scenes=4)
    pq.write_table(pa.table({"picture": [jpeg("red"), jpeg("blue")], "text": ["A red picture.", "A blue one."]}),
                   home / "colours.parquet")
    render = run_render({"render": {"ray": "never", "datasets": [
        {"adapter": "pairs", "path": str(run / "ingest")},
        {"card": "okvqa", "questions_file": okvqa["questions_file"], "annotations_file": okvqa["annotations_file"],
         "image_root": okvqa["images"]},
        {"adapter": "generic", "path": str(home / "colours.parquet"), "task": "captioning", "lang": "en",
         "name": "colours", "columns": {"image": "picture", "caption": "text"}},
        {"card": "vizwiz", "annotation_file": vizwiz["files"]["train"],
         "image_root": vizwiz["image_folders"]["train"]}]}},
        run, log=quiet)
    run_pack({"pack": {"preset": "llava-tiny", "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 1024,
                       "outputs": {"instruct": {"datasets": ["pairs", "okvqa", "colours", "vizwiz"],
                                                 "split": "train"}}}},
             run, log=quiet)
    before = all_images(PackedDataset(run / "pack" / "instruct", shuffle=False))
    records = [r for name in render["files"] for r in pq.read_table(run / "render" / name).to_pylist()]
    shutil.move(run, home / "elsewhere" / "run")
    shutil.move(okvqa["images"], home / "moved_images")
    return dict(run=home / "elsewhere" / "run", images=home / "moved_images", before=before, records=records,
                render=render, images_were=str(okvqa["images"]))


def test_references_inside_the_run_folder_are_written_relative_to_it(moved):
    images = [image for r in moved["records"] for image in r["images"]]
    shards = {image["shard"] for image in images if image["shard"]}
    assert shards == {"ingest/shards/pairs-00000.tar", "ingest/shards/pairs-00001.tar",
                      "render/images/02-generic-train.tar"}


def test_a_datasets_images_are_written_relative_to_its_named_root(moved):
    okvqa = [image for r in moved["records"] if r["dataset"] == "okvqa" for image in r["images"]]
    assert okvqa and all(image["root"] == "okvqa" and not image["path"].startswith("/") for image in okvqa)
    assert moved["render"]["image_roots"]["okvqa"] == moved["images_were"]
    assert "colours" not in moved["render"]["image_roots"]  # its images are in the run folder's render/images


def test_a_dataset_folder_inside_the_run_folder_is_recorded_relative_to_it_and_moves_with_it(moved):
    assert moved["render"]["image_roots"]["vizwiz"] == "demo/vizwiz/train"
    vizwiz = [image for r in moved["records"] if r["dataset"] == "vizwiz" for image in r["images"]]
    assert vizwiz and all(image["root"] == "vizwiz" for image in vizwiz)


def test_the_moved_run_trains_on_the_same_pixels_with_the_moved_root_given(moved):
    dataset = PackedDataset(moved["run"] / "pack" / "instruct", shuffle=False,
                            image_roots={"okvqa": str(moved["images"])})
    after = all_images(dataset)
    assert after.shape[0] == sum(len(r["images"]) for r in moved["records"] if r["split"] == "train")
    assert torch.equal(after, moved["before"])


def test_a_moved_root_not_given_is_named_with_the_key_that_re_points_it(moved):
    dataset = PackedDataset(moved["run"] / "pack" / "instruct", shuffle=False)
    with pytest.raises(FileNotFoundError, match=r"image '.+' \(root 'okvqa'\): .+ does not exist \(root 'okvqa' is "
                                                r".+\); if its dataset moved, set train.image_roots: \{okvqa: "):
        all_images(dataset)


def test_a_root_the_manifest_does_not_know_is_named_with_the_key_to_set(moved):
    from vlm.images import load_image

    with pytest.raises(FileNotFoundError, match=r"image 'a.jpg' \(root 'coco'\): no folder declared for root "
                                                r"'coco'; set train.image_roots: \{coco: FOLDER\}"):
        load_image({"root": "coco", "path": "a.jpg"}, roots={"okvqa": str(moved["images"])})


def test_an_absolute_reference_of_an_older_run_still_loads(moved):
    from vlm.images import load_image

    path = next(moved["images"].rglob("*.jpg"))
    assert load_image({"path": str(path)}).size == Image.open(path).size


def test_train_image_roots_is_a_config_key_of_folder_by_name():
    assert Train.model_validate({"image_roots": {"okvqa": "/data/okvqa"}}).image_roots == {"okvqa": "/data/okvqa"}


def test_messages_are_role_and_content_as_datasets_and_trl_read_them(moved):
    datasets = pytest.importorskip("datasets")
    name = moved["render"]["files"][1]
    table = datasets.Dataset.from_parquet(str(moved["run"] / "render" / name))
    assert table.features["messages"] == datasets.List({"role": datasets.Value("string"),
                                                        "content": datasets.Value("string")})
    first = table[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] and "<image>" in first[0]["content"]
    try:  # trl's own test of a conversational example, where trl is installed
        from trl.data_utils import is_conversational
    except ImportError:
        return
    assert all(is_conversational({"messages": messages}) for messages in table["messages"])
