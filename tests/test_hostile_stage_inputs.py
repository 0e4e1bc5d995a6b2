"""A stage checks its inputs against the previous stage's manifest before any work: a missing, truncated,
garbage or foreign file is refused naming the file, never a traceback from deep inside the stage."""
from __future__ import annotations

import pytest

from jobs.cli import main
from pipelines.manifest import StageRecord
from pipelines.render import render_record, write_instructions


@pytest.fixture()
def run(tmp_path):
    """A finished render output of 40 VQA records in two files, and a pack config reading it."""
    records = [{"id": f"vqav2:train:{i}", "dataset": "vqav2", "task": "vqa", "split": "train", "lang": "en",
                "image": {"path": f"/data/{i}.jpg", "width": 64, "height": 64},
                "question": "What color is the circle?", "answer": ["red", "blue"][i % 2]} for i in range(40)]
    render = tmp_path / "run" / "render"
    for k in range(2):
        write_instructions([render_record(r, seed=0) for r in records[20 * k:20 * (k + 1)]],
                           render / "instructions" / f"0{k}.parquet")
    record = StageRecord("render", {"test": True})
    record.rows_out = 40
    record.extra.update(files=["instructions/00.parquet", "instructions/01.parquet"], datasets={}, templates={})
    record.finish(render)
    config = tmp_path / "pack.yaml"
    config.write_text("pack:\n  preset: llava-1.5-tiny\n  ray: never\n"
                      "  outputs: {instruct: {datasets: [vqav2], split: train}}\n")
    return tmp_path / "run", config


def pack(run, config, capsys) -> tuple[int, str]:
    code = main(["pack", str(config), "--out", str(run)])
    return code, capsys.readouterr().err


def test_an_intact_render_output_packs(run, capsys):
    out, config = run
    assert pack(out, config, capsys)[0] == 0


def test_a_missing_instructions_file_is_named(run, capsys):
    out, config = run
    (out / "render" / "instructions" / "01.parquet").unlink()
    code, error = pack(out, config, capsys)
    assert code == 2 and "01.parquet: listed in" in error and "missing" in error
    assert not (out / "pack").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_instructions_file_is_named(run, capsys, damage):
    out, config = run
    path = out / "render" / "instructions" / "01.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not parquet at all" * 100)
    code, error = pack(out, config, capsys)
    assert code == 2 and "01.parquet: not a readable parquet file" in error


def test_a_file_of_another_schema_is_named(run, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, config = run
    pq.write_table(pa.table({"url": ["http://x/1.jpg"] * 20}), out / "render" / "instructions" / "01.parquet")
    code, error = pack(out, config, capsys)
    assert code == 2 and "01.parquet: not an instructions file" in error


def test_records_missing_from_what_the_manifest_counts_are_refused(run, capsys):
    out, config = run
    write_instructions([], out / "render" / "instructions" / "01.parquet")
    code, error = pack(out, config, capsys)
    assert code == 2 and "hold 20 records, its manifest 40" in error


@pytest.fixture(scope="module")
def ingested(small_world, tmp_path_factory):
    """A real ingest output of the small shapes world."""
    from jobs.ingest import run_ingest

    world_dir, _ = small_world
    out = tmp_path_factory.mktemp("ingested")
    run_ingest({"ingest": {"sources": [{"path": str(world_dir / "urls.parquet"), "url_col": "url",
                                        "caption_col": "caption"}], "serve": str(world_dir),
                           "allow_private_network": True, "image_size": 64, "samples_per_shard": 30,
                           "download_shard_size": 50}}, out, log=lambda *_: None)
    return out


def render_pairs(ingest_copy, tmp_path, capsys) -> tuple[int, str]:
    config = tmp_path / "render.yaml"
    config.write_text(f"render:\n  datasets: [{{adapter: pairs, path: '{ingest_copy}'}}]\n  ray: never\n")
    code = main(["render", str(config), "--out", str(tmp_path / "run")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("damage", ["deleted", "truncated", "index deleted"])
def test_render_refuses_a_pairs_shard_that_changed_after_ingest_naming_it(ingested, tmp_path, capsys, damage):
    import json
    import shutil

    copy = tmp_path / "ingest"
    shutil.copytree(ingested / "ingest", copy)
    shards = json.loads((copy / "manifest.json").read_text())["shards"]
    assert len(shards) >= 2
    tar = copy / shards[1]
    if damage == "deleted":
        tar.unlink()
    elif damage == "truncated":
        tar.write_bytes(tar.read_bytes()[:1000])
    else:
        tar.with_suffix(".parquet").unlink()
    code, error = render_pairs(copy, tmp_path, capsys)
    assert code == 2 and f"pairs shard {tar}" in error and "re-run `loom ingest`" in error
    assert not list((tmp_path / "run").glob("render/instructions/*.parquet"))


def test_an_intact_pairs_output_renders_every_pair_the_manifest_counts(ingested, tmp_path, capsys):
    import json

    code, _ = render_pairs(ingested / "ingest", tmp_path, capsys)
    manifest = json.loads((tmp_path / "run" / "render" / "manifest.json").read_text())
    assert code == 0 and manifest["rows_out"] == json.loads((ingested / "ingest" / "manifest.json").read_text())["rows_out"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A finished pack output of LLaVA (tiny) over a small red/blue render output."""
    from jobs.pack import run_pack
    from test_train_stages import red_blue_run

    root = tmp_path_factory.mktemp("packed")
    red_blue_run(root)
    run_pack({"pack": {"preset": "llava-tiny", "input": str(root / "render"), "seq_len": 256,
                       "sequences_per_shard": 2, "tokenizer": {"train": {"vocab_size": 400}},
                       "outputs": {"pretrain": {"datasets": ["mix"]}, "instruct": {"datasets": ["mix"]}}}},
             root, log=lambda *_: None)
    return root / "pack"


def train(tmp_path, capsys) -> tuple:
    """`loom train` on a copy of the pack output, damaged by the caller through the copy it is handed."""
    config = tmp_path / "train.yaml"
    config.write_text(f"train:\n  input: '{tmp_path / 'pack'}'\n  stages: {{pretrain: {{max_steps: 1}}, "
                      "instruct: {max_steps: 1}}\n")
    code = main(["train", str(config), "--out", str(tmp_path / "run")])
    return code, capsys.readouterr().err, tmp_path / "run" / "train"


@pytest.fixture()
def pack_copy(packed, tmp_path):
    import shutil

    shutil.copytree(packed, tmp_path / "pack")
    shards = sorted((tmp_path / "pack" / "instruct" / "shards").glob("packed-*.parquet"))
    assert len(shards) >= 2
    return shards[0]


def test_an_intact_pack_output_lists_every_shard_its_windows_wrote(packed):
    from pipelines.pack_window import packed_shards

    shards = packed_shards(packed / "instruct")
    assert shards == sorted((packed / "instruct" / "shards").glob("packed-*.parquet"))


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage", "another schema", "fewer rows", "a stray shard"])
def test_train_refuses_a_damaged_packed_shard_naming_it_before_any_training(pack_copy, tmp_path, capsys, damage):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = pack_copy
    sequences = sum(pq.read_metadata(p).num_rows for p in shard.parent.glob("packed-*.parquet"))
    said = {"deleted": f"{shard}: written by pack (window 0) but missing",
            "truncated": f"{shard}: not a readable parquet file", "garbage": f"{shard}: not a readable parquet file",
            "another schema": f"{shard}: not a packed shard (no ['images', 'input_ids', 'labels', 'segment_lengths']",
            "fewer rows": f"{shard.name}, {shard.name.replace('00000.parquet', '00001.parquet')} in {shard.parent}: hold {sequences - 1} sequences, window 0 wrote {sequences}",
            "a stray shard": f"{shard.with_name('packed-00009-00000.parquet')}: not written by the pack"}[damage]
    if damage == "deleted":
        shard.unlink()
    elif damage in ("truncated", "garbage"):
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"PAR1 garbage" * 200)
    elif damage == "another schema":
        pq.write_table(pa.table({"url": ["http://x/1.jpg"]}), shard)
    elif damage == "fewer rows":
        pq.write_table(pq.read_table(shard).slice(0, 1), shard)
    else:
        shard.with_name("packed-00009-00000.parquet").write_bytes(shard.read_bytes())
    code, error, stage_dir = train(tmp_path, capsys)
    assert code == 2 and error.startswith("loom: config error: train.input: ") and said in error
    assert "re-run `loom pack`" in error and not stage_dir.exists()
