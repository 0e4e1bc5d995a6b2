"""Every stage of every preset, tiny, trained from `loom pack`'s output by the staged trainer (vlm.train)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import vlm
from jobs.pack import run_pack
from vlm.builders import build_model
from vlm.train import TrainConfig, train_stage

from test_pack_to_model import rendered  # noqa: F401 - the shared fixture: render output with images on disk


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", vlm.presets())
def test_every_stage_trains_its_groups_and_leaves_the_frozen_ones_bit_identical(name, rendered, tmp_path):  # noqa: F811
    preset = vlm.get_preset(name, size="tiny")
    outputs = {stage.data: {"datasets": ["mix"], "split": "train"} for stage in preset.stages}
    config = {"pack": {"preset": preset.name, "input": str(rendered / "render"), "tokenizer": {"train": {"vocab_size": 400}},
                       "seq_len": 1024, "outputs": outputs}}
    run_pack(config, tmp_path, log=lambda *_: None)
    manifest = run_pack(config, tmp_path, log=lambda *_: None)  # the second run finds it complete
    assert sorted(manifest["outputs"]) == sorted(outputs)
    import json

    packed = json.loads((tmp_path / "pack" / preset.stages[0].data / "manifest.json").read_text())
    model = build_model(preset, vocab_size=400, image_token_id=packed["image_token_id"], pad_token_id=packed["pad_token_id"])
    previous = None
    for stage in preset.stages:
        before = {group: snapshot(module) for group, module in model.groups.items()}
        summary = train_stage(model, dataclasses.replace(stage, max_steps=2), tmp_path / "pack" / stage.data,
                              tmp_path / "train" / stage.name,
                              TrainConfig(batch_size=2, progress=False, tensorboard=False, init_from=previous))
        log = [json.loads(line) for line in (tmp_path / "train" / stage.name / "log.jsonl").read_text().splitlines()]
        assert len(log) == 2 and all(torch.isfinite(torch.tensor(row["loss"])) for row in log), (name, stage.name)
        for group, module in model.groups.items():
            after = snapshot(module)
            unchanged = all(torch.equal(after[k], before[group][k]) for k in after)
            assert unchanged == (group not in stage.trainable), (name, stage.name, group)
        previous = str(tmp_path / "train" / stage.name)
        assert summary


@pytest.mark.parametrize("name", ["qwen2-vl", "instructblip-vicuna", "blip2-flant5"])
def test_loom_train_runs_every_stage_and_scores_held_out_questions(name, tmp_path):
    """`loom train` end to end for architectures whose evaluation reads more than pixels: Qwen2-VL's
    native-resolution grids, InstructBLIP's instruction in the Q-Former's vocabulary, FlanT5's decoder."""
    from jobs.train import run_train

    red_blue_run(tmp_path)
    preset = vlm.get_preset(name, size="tiny")
    config = {
        "pack": {"preset": preset.name, "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 1024,
                 "outputs": {s.data: {"datasets": ["mix"], "split": "train"} for s in preset.stages}},
        "train": {"batch_size": 2, "stages": {s.name: {"max_steps": 1} for s in preset.stages},
                  "evaluate": {"datasets": ["mix"], "split": "val", "max_new_tokens": 3}},
    }
    run_pack(config, tmp_path, log=lambda *_: None)
    manifest = run_train(config, tmp_path, log=lambda *_: None)
    assert [s["name"] for s in manifest["stages"]] == [s.name for s in preset.stages]
    assert manifest["evaluation"]["questions"] == 4 and all(s["accuracy"] is not None for s in manifest["stages"])


def test_a_stage_trains_at_its_own_resolution(rendered, tmp_path):  # noqa: F811
    """Qwen-VL's first stage runs at 224 px before 448: a stage's image_size resizes its images, the tower's
    position embeddings are interpolated to the smaller grid and the resampler still gives 256 (here 16) tokens."""
    import dataclasses
    import json

    preset = vlm.get_preset("qwen-vl", size="tiny")
    stage = dataclasses.replace(preset.stages[0], image_size=preset.image_size // 2, max_steps=2)
    config = {"pack": {"preset": preset.name, "input": str(rendered / "render"), "tokenizer": {"train": {"vocab_size": 400}},
                       "seq_len": 1024, "outputs": {stage.data: {"datasets": ["mix"], "split": "train"}}}}
    run_pack(config, tmp_path, log=lambda *_: None)
    packed = json.loads((tmp_path / "pack" / stage.data / "manifest.json").read_text())
    model = build_model(preset, vocab_size=400, image_token_id=packed["image_token_id"], pad_token_id=packed["pad_token_id"])
    seen = []
    model.vision_tower.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].shape[-1]), with_kwargs=True)
    train_stage(model, stage, tmp_path / "pack" / stage.data, tmp_path / "train",
                TrainConfig(batch_size=2, progress=False, tensorboard=False))
    assert seen and set(seen) == {preset.image_size // 2}
    log = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def red_blue_run(tmp_path):
    """A render output of red and blue images with a question each (the last third held out)."""
    from PIL import Image

    from test_pack_job import instruction, write_render

    rows = []
    for i in range(12):
        Image.new("RGB", (64, 48), ["red", "blue"][i % 2]).save(tmp_path / f"{i}.png")
        row = instruction(i, "vqa", ["red", "blue"][i % 2])
        row["images"][0].update(path=str(tmp_path / f"{i}.png"), width=64, height=48)
        row["messages"][0]["content"] = "<image>\nWhat colour is it?"
        if i >= 8:  # held out, with its human answers
            row.update(split="val", answers=[["red", "blue"][i % 2]] * 3, question_type="what color")
        rows.append(row)
    write_render(tmp_path / "render", rows)


def test_a_config_overrides_a_stages_data_and_groups_and_starts_from_a_local_llm_checkpoint(tmp_path):
    """A stage is data, groups, objective and schedule: a config may point LLaVA's first stage at the
    instructions and freeze the LLM in its second, and start the run from a pretrained LLM folder whose
    vocabulary is smaller than the run's tokenizer (its rows copied, the rest at their mean)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from jobs.train import run_train

    preset = vlm.get_preset("llava", size="tiny")
    red_blue_run(tmp_path)
    llm = LlamaForCausalLM(LlamaConfig(**{**preset.llm, "vocab_size": 300}))
    llm.save_pretrained(tmp_path / "llm")
    config = {
        "pack": {"preset": preset.name, "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 1024,
                 "outputs": {"instruct": {"datasets": ["mix"], "split": "train"}}},
        "train": {"batch_size": 2, "init": {"llm": str(tmp_path / "llm")},
                  "stages": {"pretrain": {"data": "instruct", "max_steps": 1},
                             "instruct": {"trainable": ["connector"], "max_steps": 1, "betas": [0.9, 0.95]}},
                  "evaluate": {"datasets": ["mix"], "split": "val", "max_new_tokens": 2}},
    }
    run_pack(config, tmp_path, log=lambda *_: None)
    logs = []
    manifest = run_train(config, tmp_path, log=logs.append)
    assert [(s["data"], s["trainable"]) for s in manifest["stages"]] == [("instruct", ["connector"])] * 2
    assert any("300 copied" in line for line in logs)
    optimizer = torch.load(tmp_path / "train" / "instruct" / "checkpoint" / "optimizer.pt")
    assert tuple(optimizer["param_groups"][0]["betas"]) == (0.9, 0.95)
    from vlm.train import load_model

    trained = load_model(tmp_path / "train" / "instruct").language_model.state_dict()
    source = llm.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in source.items() if v.shape == trained[k].shape)
    embeddings = trained["model.embed_tokens.weight"]
    assert torch.equal(embeddings[:300], source["model.embed_tokens.weight"])
    assert torch.allclose(embeddings[300:], source["model.embed_tokens.weight"].mean(0).expand(len(embeddings) - 300, -1))


def test_every_stage_override_lands_on_its_stage_and_the_train_config_holds_only_the_machine():
    from dataclasses import fields

    from jobs.train import stages_of, train_settings
    from vlm.train import TrainConfig

    preset = vlm.get_preset("llava", size="tiny")
    given = {"lr": 2e-5, "epochs": 3, "max_steps": 7, "warmup_ratio": 0.1, "weight_decay": 0.05,
             "betas": [0.9, 0.95], "trainable": ["connector"], "data": "pretrain", "objective": "lm"}
    pretrain, instruct = stages_of(preset, train_settings({"train": {"stages": {"instruct": given}}}, preset))
    assert pretrain == preset.stage("pretrain")
    assert instruct == dataclasses.replace(preset.stage("instruct"), **{**given, "betas": (0.9, 0.95),
                                                                        "trainable": ("connector",)})
    assert not set(given) & {field.name for field in fields(TrainConfig)}


@pytest.mark.parametrize("train, wrong", [
    ({"stages": {"pretrain": {"trainable": ["wings"]}}}, r"train.stages.pretrain.trainable\[0\]: 'wings' is not one of"),
    ({"stages": {"pretrain": {"objective": "contrastive"}}}, r"train.stages.pretrain.objective: 'contrastive'"),
    ({"stages": {"instruct": {"data": "nowhere"}}}, r"pack output 'nowhere', which pack did not write"),
    ({"init": {"llm": "/no/such/llm"}}, r"train.init.llm: /no/such/llm: no such folder"),
    ({"init": {"weights": "x"}}, r"train.init: unknown key\(s\) \['weights'\]; expected some of"),
    ({"strategy": "zero3"}, r"train.strategy: 'zero3'; expected ddp or fsdp"),
    ({"stages": {"pretrain": {"image_size": 64}}}, r"image_size: .*only presets with a fixed count"),
])
def test_wrong_stage_overrides_and_init_folders_are_refused_with_the_fix(train, wrong, tmp_path):
    from jobs.config import ConfigError
    from jobs.train import run_train

    preset = vlm.get_preset("llava", size="tiny")
    red_blue_run(tmp_path)
    config = {"pack": {"preset": preset.name, "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 1024,
                       "outputs": {s.data: {"datasets": ["mix"], "split": "train"} for s in preset.stages}},
              "train": train}
    run_pack(config, tmp_path, log=lambda *_: None)
    with pytest.raises(ConfigError, match=wrong):
        run_train(config, tmp_path, log=lambda *_: None)


def test_a_q_former_stage_pointed_at_an_output_packed_for_another_reading_is_refused(tmp_path):
    from jobs.config import ConfigError
    from jobs.train import run_train

    preset = vlm.get_preset("instructblip-vicuna", size="tiny")
    red_blue_run(tmp_path)
    config = {"pack": {"preset": preset.name, "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 1024,
                       "outputs": {s.data: {"datasets": ["mix"], "split": "train"} for s in preset.stages}},
              "train": {"stages": {"representation": {"data": "instruct"}}}}
    run_pack(config, tmp_path, log=lambda *_: None)
    with pytest.raises(ConfigError, match="packed with the instruction; .*qformer_text: caption"):
        run_train(config, tmp_path, log=lambda *_: None)


def test_loom_train_killed_with_sigkill_resumes_to_the_losses_of_an_uninterrupted_run(tmp_path):
    """`loom train` as a user runs it, killed with SIGKILL mid-stage: run again, it resumes from the last
    checkpoint and logs the same losses, step for step, as a run never killed."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    red_blue_run(tmp_path)
    preset = vlm.get_preset("llava", size="tiny")
    config = {
        "pack": {"preset": preset.name, "input": str(tmp_path / "render"), "tokenizer": {"train": {"vocab_size": 400}},
                 "seq_len": 256, "outputs": {s.data: {"datasets": ["mix"], "split": "train"} for s in preset.stages}},
        "train": {"input": str(tmp_path / "pack"), "batch_size": 1, "checkpoint_every": 3,
                  "stages": {"pretrain": {"max_steps": 2}, "instruct": {"max_steps": 80}}},
    }
    run_pack(config, tmp_path, log=lambda *_: None)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    loom = [sys.executable, "-m", "jobs.cli", "train", str(tmp_path / "run.yaml"), "--out"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run(loom + [str(tmp_path / "whole")], check=True, capture_output=True, env=env)

    killed = tmp_path / "killed"
    log = killed / "train" / "instruct" / "log.jsonl"
    process = subprocess.Popen(loom + [str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 10):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    logged = len(log.read_text().splitlines())
    assert 10 <= logged < 80 and not (killed / "train" / "instruct" / "stage_complete.json").exists()

    subprocess.run(loom + [str(killed)], check=True, capture_output=True, env=env)
    whole = [json.loads(line) for line in (tmp_path / "whole" / "train" / "instruct" / "log.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, 81))
    # two processes agree to float rounding (CPU kernels may sum in another order); a resume from the wrong
    # rows or state would differ in the first digits
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], rel=1e-5)
    summary = json.loads((killed / "train" / "instruct" / "stage_complete.json").read_text())
    assert 0 < summary["resumed_from_step"] < 80 and summary["resumed_from_step"] % 3 == 0
