"""Every stage of every preset, tiny, trained from `loom pack`'s output by the staged trainer (vlm.train)."""
from __future__ import annotations

import pytest
import torch

import vlm
from jobs.pack import run_pack
from vlm.model import build_model
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
        summary = train_stage(model, stage, tmp_path / "pack" / stage.data, tmp_path / "train" / stage.name,
                              TrainConfig(batch_size=2, max_steps=2, progress=False, tensorboard=False, init_from=previous))
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
    from PIL import Image

    from jobs.train import run_train
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
    stage = dataclasses.replace(preset.stages[0], image_size=preset.image_size // 2)
    config = {"pack": {"preset": preset.name, "input": str(rendered / "render"), "tokenizer": {"train": {"vocab_size": 400}},
                       "seq_len": 1024, "outputs": {stage.data: {"datasets": ["mix"], "split": "train"}}}}
    run_pack(config, tmp_path, log=lambda *_: None)
    packed = json.loads((tmp_path / "pack" / stage.data / "manifest.json").read_text())
    model = build_model(preset, vocab_size=400, image_token_id=packed["image_token_id"], pad_token_id=packed["pad_token_id"])
    seen = []
    model.vision_tower.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].shape[-1]), with_kwargs=True)
    train_stage(model, stage, tmp_path / "pack" / stage.data, tmp_path / "train",
                TrainConfig(batch_size=2, max_steps=2, progress=False, tensorboard=False))
    assert seen and set(seen) == {preset.image_size // 2}
    log = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
