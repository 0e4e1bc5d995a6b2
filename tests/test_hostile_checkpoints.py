"""Checkpoints written whole and checked before use: a damaged newest checkpoint is named and training resumes
from the one before it, to the losses of an undamaged run; with no good checkpoint left the error names the
file; a model folder damaged after save_pretrained is named by from_pretrained."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from vlm.checkpoint import from_pretrained, save_pretrained
from vlm.checkpoint_files import CHECKSUMS, DamagedCheckpoint, verify, written_folder
from vlm.train import CHECKPOINT_FILES, read_log, train_stage

from test_vlm_data import write_packed_corpus
from test_vlm_train import INSTRUCT, killed_in_step, new_model, quick, short

STAGE, CONFIG = short(INSTRUCT, 4), dict(checkpoint_every=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_packed_corpus(tmp_path_factory.mktemp("corpus"))[0]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """Four steps, a checkpoint after each: the losses every resumed run must log."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train_stage(new_model(corpus), STAGE, corpus, out, quick(**CONFIG))
    return out, [r["loss"] for r in read_log(out)]


@pytest.fixture(scope="module")
def killed(corpus, tmp_path_factory):
    """The same run killed in step 4: its checkpoint is step 3's, the previous one step 2's."""
    out = tmp_path_factory.mktemp("killed")
    with killed_in_step(4):
        train_stage(new_model(corpus), STAGE, corpus, out, quick(**CONFIG))
    return out


@pytest.fixture()
def run(killed, tmp_path):
    """A copy of the killed run to damage."""
    shutil.copytree(killed, tmp_path / "run")
    return tmp_path / "run"


def step_of(folder) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["step"]


def resume(corpus, out) -> tuple[dict, list[str]]:
    lines = []
    summary = train_stage(new_model(corpus, seed=5), STAGE, corpus, out, quick(**CONFIG), log=lines.append)
    return summary, lines


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b"")


def garbage_of_the_same_length(path):
    path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256) + b"\0" * (path.stat().st_size % 256))


def garbage_json(path):
    path.write_text("{'step': 3, oops")


DAMAGES = {
    "truncated safetensors": ("model.safetensors", truncate, "truncated safetensors ("),
    "empty optimizer state": ("optimizer.pt", empty, "empty optimizer state (0 of "),
    "garbage RNG state": ("rng.pt", garbage_of_the_same_length, "damaged RNG state (CRC-32"),
    "garbage trainer state": ("trainer_state.json", garbage_json, "trainer state ("),
    "deleted scheduler state": ("scheduler.pt", os.remove, "scheduler.pt: missing"),
}


def test_every_checkpoint_is_kept_with_the_one_before_it_and_its_checksums(killed):
    assert step_of(killed / "checkpoint") == 3 and step_of(killed / "checkpoint.previous") == 2
    listed = json.loads((killed / "checkpoint" / CHECKSUMS).read_text())["files"]
    assert {"model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"} <= set(listed)
    assert listed["model.safetensors"]["bytes"] == (killed / "checkpoint" / "model.safetensors").stat().st_size
    assert not [p.name for p in killed.iterdir() if ".tmp" in p.name or p.name.endswith(".old")]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_last_checkpoint_is_named_and_training_resumes_from_the_previous_one(
        damage, corpus, uninterrupted, run):
    name, spoil, said = DAMAGES[damage]
    spoil(run / "checkpoint" / name)
    summary, lines = resume(corpus, run)
    assert summary["resumed_from_step"] == 2
    assert [r["loss"] for r in read_log(run)] == uninterrupted[1]
    assert len(lines) == 1 and f"{run / 'checkpoint' / name}: " in lines[0] and said in lines[0]
    assert "resuming from the previous checkpoint" in lines[0] and "step 2" in lines[0]


def test_after_falling_back_the_damaged_checkpoint_is_not_kept_as_the_previous_one(corpus, run):
    truncate(run / "checkpoint" / "model.safetensors")
    resume(corpus, run)
    assert step_of(run / "checkpoint") == 4 and step_of(run / "checkpoint.previous") == 3
    verify(run / "checkpoint.previous", required=CHECKPOINT_FILES)  # written again after the resume: whole
    summary, lines = resume(corpus, run)  # complete: skipped, nothing to say
    assert summary["steps"] == 4 and lines == []


@pytest.mark.parametrize("damage", ["truncated safetensors", "empty optimizer state", "garbage trainer state"])
def test_a_checkpoint_written_before_checksums_is_checked_by_its_files_structure(damage, corpus, uninterrupted, run):
    name, spoil, said = DAMAGES[damage]
    for folder in ("checkpoint", "checkpoint.previous"):
        (run / folder / CHECKSUMS).unlink()
    spoil(run / "checkpoint" / name)
    summary, lines = resume(corpus, run)
    assert summary["resumed_from_step"] == 2 and [r["loss"] for r in read_log(run)] == uninterrupted[1]
    assert f"{run / 'checkpoint' / name}: " in lines[0] and said.split(" (")[0] in lines[0]


def test_with_no_good_checkpoint_left_the_error_names_the_file_and_the_fix(corpus, run):
    truncate(run / "checkpoint" / "model.safetensors")
    empty(run / "checkpoint.previous" / "optimizer.pt")
    with pytest.raises(DamagedCheckpoint) as refused:
        resume(corpus, run)
    message = str(refused.value)
    size = (run / "checkpoint" / "model.safetensors").stat().st_size
    assert message.startswith(f"{run / 'checkpoint' / 'model.safetensors'}: truncated safetensors ({size} of ")
    assert f"{run / 'checkpoint.previous' / 'optimizer.pt'}: empty optimizer state" in message
    assert "no good checkpoint to resume from" in message and "\n" not in message


def test_a_finished_stage_whose_final_checkpoint_is_damaged_trains_its_last_steps_again(
        corpus, uninterrupted, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(uninterrupted[0], out)
    garbage_of_the_same_length(out / "checkpoint" / "model.safetensors")
    summary, lines = resume(corpus, out)
    assert "model.safetensors: damaged safetensors (CRC-32" in lines[0] and "last steps train again" in lines[0]
    assert summary["resumed_from_step"] == 3 and [r["loss"] for r in read_log(out)] == uninterrupted[1]


def test_from_pretrained_names_a_damaged_file(corpus, tmp_path):
    folder = save_pretrained(new_model(corpus), tmp_path / "model")
    assert from_pretrained(folder) is not None
    truncate(folder / "model.safetensors")
    with pytest.raises(DamagedCheckpoint, match=r"model\.safetensors: truncated safetensors \(\d+ of \d+ bytes\); "
                                                r"write the folder again"):
        from_pretrained(folder)
    (folder / CHECKSUMS).unlink()  # a folder written before checksums: the safetensors header tells
    with pytest.raises(DamagedCheckpoint, match=r"model\.safetensors: truncated safetensors \(\d+ of \d+ bytes\)"):
        from_pretrained(folder)


def test_a_failed_write_leaves_the_folder_it_would_replace_untouched(tmp_path):
    folder = tmp_path / "checkpoint"
    with written_folder(folder) as tmp:
        (tmp / "a.json").write_text("{}")
    with pytest.raises(RuntimeError), written_folder(folder, keep_previous=True) as tmp:
        (tmp / "a.json").write_text('{"newer": 1}')
        raise RuntimeError("the writer failed")
    assert (folder / "a.json").read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_loom_train_names_the_damaged_file_and_resumes_or_refuses(tmp_path, capsys):
    """Through `loom train`: the fallback is a line of its output; with both checkpoints damaged it exits 2
    with the file named, before any training."""
    import yaml

    from jobs.cli import main
    from jobs.pack import run_pack
    from test_train_stages import red_blue_run

    red_blue_run(tmp_path)
    config = {"pack": {"preset": "llava-tiny", "input": str(tmp_path / "render"), "seq_len": 256,
                       "tokenizer": {"train": {"vocab_size": 400}},
                       "outputs": {"pretrain": {"datasets": ["mix"]}, "instruct": {"datasets": ["mix"]}}},
              "train": {"input": str(tmp_path / "pack"), "checkpoint_every": 2,
                        "stages": {"pretrain": {"max_steps": 4}, "instruct": {"max_steps": 1}},
                        "evaluate": {"datasets": ["mix"], "max_new_tokens": 2, "limit": 2}}}
    run_pack(config, tmp_path, log=lambda *_: None)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(out)]) == 0
    stage = out / "train" / "pretrain"
    (stage / "stage_complete.json").unlink()  # as if killed before the end: resume from its checkpoints
    (out / "train" / "manifest.json").unlink()
    shutil.rmtree(out / "train" / "instruct")
    garbage_json(stage / "checkpoint" / "trainer_state.json")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"train: {stage / 'checkpoint' / 'trainer_state.json'}: truncated trainer state (" in said
    assert f"resuming from the previous checkpoint instead ({stage / 'checkpoint.previous'}, step" in said

    (stage / "stage_complete.json").unlink()
    (out / "train" / "manifest.json").unlink()
    for folder in ("checkpoint", "checkpoint.previous"):
        empty(stage / folder / "rng.pt")
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"loom: {stage / 'checkpoint' / 'rng.pt'}: empty RNG state (0 of ") and "\n" not in error
