"""`loom run` on a reduced quickstart: every stage, the report, and a re-run that skips everything."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import main

CONFIG = Path(__file__).parents[1] / "jobs" / "configs" / "ci.yaml"
STAGES = ("ingest", "render", "pack", "train")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    assert main(["run", str(CONFIG), "--out", str(out)]) == 0
    return out


def test_every_stage_reports_rows_in_out_and_drop_reasons(run):
    report = json.loads((run / "report.json").read_text())
    for stage in STAGES:
        manifest = report["stages"][stage]
        assert manifest["rows_in"] > 0 and manifest["rows_out"] > 0, stage
        assert manifest["rows_in"] >= manifest["rows_out"]
    ingest = report["stages"]["ingest"]
    assert ingest["rows_in"] == ingest["rows_out"] + sum(ingest["dropped"].values())
    assert {"http_404", "not_image", "too_small", "aspect", "language", "duplicate"} <= set(ingest["dropped"])


def test_report_carries_mix_fill_losses_and_accuracy(run):
    report = json.loads((run / "report.json").read_text())
    head = report["headline"]
    assert abs(head["language_mix"]["en"] - 0.773) <= 0.005
    assert 0.5 < head["packing_fill"]["instruct"] <= 1.0
    train = report["stages"]["train"]
    assert [s["name"] for s in train["stages"]] == ["pretrain", "instruct"]
    assert [s["trainable"] for s in train["stages"]] == [["connector"], ["connector", "llm"]]
    instruct = train["stages"][1]["loss_curve"]
    assert instruct[-1][1] < instruct[0][1]  # the LLM is learning
    evaluation = train["evaluation"]
    assert evaluation["questions"] == 24 and 0.0 <= evaluation["accuracy"] <= 1.0
    # held-out accuracy after every stage, the last one's being the evaluation's
    assert all(0.0 <= s["accuracy"] <= 1.0 for s in train["stages"]) and train["stages"][-1]["accuracy"] == evaluation["accuracy"]
    assert "majority_answer" in evaluation["baselines"]
    figures = report["figures"]["ingest"]
    assert sum(figures["original_shorter_side"].values()) == report["stages"]["ingest"]["rows_out"]
    assert set(figures["caption_length"]) == {"en", "zh"}
    assert figures["download_throughput"] and all(p["images_per_s"] > 0 for p in figures["download_throughput"])
    html = (run / "report.html").read_text()
    assert "held-out VQA" in html and "<svg" in html and "language mix" in html
    assert "held-out VQA accuracy" in html  # in each stage's heading
    captions = evaluation["captions"]
    assert captions["images"] == 8 and captions["cider"] >= 0 and all(s["cider"] is not None for s in train["stages"])
    assert "CIDEr-D" in html


def test_packed_sequences_fit_and_mark_segments(run):
    import pyarrow.parquet as pq

    manifest = json.loads((run / "pack" / "instruct" / "manifest.json").read_text())
    for shard in (run / "pack" / "instruct" / "shards").glob("*.parquet"):
        for row in pq.read_table(shard).to_pylist():
            assert sum(row["segment_lengths"]) == len(row["input_ids"]) <= manifest["seq_len"]
            images = sum(1 for t in row["input_ids"] if t == manifest["image_token_id"])
            assert images == len(row["images"]) * manifest["visual_tokens"]


def test_a_rerun_skips_every_completed_stage(run, capsys):
    before = {s: (run / s / "manifest.json").read_text() for s in STAGES}
    assert main(["run", str(CONFIG), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    for stage in STAGES:
        assert f"{stage}: complete in" in printed
        assert (run / stage / "manifest.json").read_text() == before[stage]


def test_a_bad_config_is_refused_with_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pack:\n  seq_len: long\n  outputs: {x: {datasets: [vqav2]}}\n")
    assert main(["pack", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("loom: config error: pack.seq_len: 'long' is text; expected a whole number "
                                       ">= 64 (tokens of a packed sequence)\n")


def test_changing_the_training_config_retrains_instead_of_reusing_stages(run, tmp_path):
    import shutil

    import yaml

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = yaml.safe_load(CONFIG.read_text())
    config["train"]["stages"]["instruct"]["max_steps"] = 6
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert main(["train", str(changed), "--out", str(copy)]) == 0
    report = json.loads((copy / "train" / "manifest.json").read_text())
    assert [s["steps"] for s in report["stages"]] == [4, 6]
