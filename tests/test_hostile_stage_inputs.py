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
