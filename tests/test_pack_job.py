"""`loom pack` with a user's own tokenizer folder, as real users bring one from a local path."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from jobs.config import ConfigError
from jobs.pack import run_pack
from pipelines.manifest import StageRecord
from pipelines.render import render_record, write_instructions


@pytest.fixture()
def render_dir(tmp_path):
    records = [{"id": f"vqav2:train:{i}", "dataset": "vqav2", "task": "vqa", "split": "train", "lang": "en",
                "image": {"path": f"/data/{i}.jpg", "width": 64, "height": 64},
                "question": "What color is the circle?", "answer": ["red", "blue"][i % 2]} for i in range(40)]
    out = tmp_path / "run" / "render"
    write_instructions([render_record(r, seed=0) for r in records], out / "instructions" / "00.parquet")
    record = StageRecord("render", {"test": True})
    record.extra["files"] = ["instructions/00.parquet"]
    record.finish(out)
    return out


def save_tokenizer_without_pad(folder):
    """A byte-level BPE tokenizer folder with <s>, </s>, <image> but no <pad>, like many LLaMA tokenizers."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(["What color is the circle? red blue USER: ASSISTANT: chat"] * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))


def config(tokenizer_dir):
    return {"pack": {"preset": "llava-1.5-tiny", "tokenizer": {"path": str(tokenizer_dir)},
                     "outputs": {"instruct": {"datasets": ["vqav2"], "split": "train"}}}}


def test_a_tokenizer_without_pad_pads_with_end_of_sequence(render_dir, tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    run_pack(config(tmp_path / "tok"), render_dir.parent, log=lambda *_: None)
    manifest = json.loads((render_dir.parent / "pack" / "instruct" / "manifest.json").read_text())
    assert manifest["pad_token_id"] == manifest["eos_token_id"] == 1
    assert manifest["samples"] == 40


def test_changing_the_tokenizer_repacks(render_dir, tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    first = run_pack(config(tmp_path / "tok"), render_dir.parent, log=lambda *_: None)
    logs = []
    run_pack(config(tmp_path / "tok"), render_dir.parent, log=logs.append)
    assert any("skipped" in line for line in logs)
    file = tmp_path / "tok" / "tokenizer.json"
    file.write_text(file.read_text() + "\n")  # any edit to the file, even one that changes no token
    logs.clear()
    second = run_pack(config(tmp_path / "tok"), render_dir.parent, log=logs.append)
    assert not any("skipped" in line for line in logs) and second["inputs"] != first["inputs"]


def test_a_folder_without_tokenizer_json_is_refused(render_dir, tmp_path):
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        run_pack(config(tmp_path / "empty"), render_dir.parent)
