"""LoRA stages (vlm.lora, Stage.lora, train.stages.NAME.lora): adapters learn, the weights under them stay
frozen, and every checkpoint is a plain model with the adapters merged in."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import vlm
import vlm.train
from jobs.config import ConfigError
from jobs.pack import run_pack
from jobs.train import run_train, stages_of, train_settings
from vlm import lora
from vlm.checkpoint import weights_to_save
from vlm.builders import build_model
from vlm.preset import MINIGPT_V2_LORA, LoRA
from vlm.train import TrainConfig, load_model, read_log, train_stage

from test_train_stages import red_blue_run
from test_vlm_train import killed_in_step

MINIGPT_V2 = vlm.get_preset("minigpt-v2", size="tiny")
ADAPTED = ("q_proj", "v_proj")


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def adapted(key: str) -> bool:
    return any(f".{name}." in key for name in ADAPTED)


def pack(tmp_path, preset, seq_len=128):
    red_blue_run(tmp_path)
    config = {"pack": {"preset": preset.name, "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": seq_len,
                       "outputs": {s.data: {"datasets": ["mix"], "split": "train"} for s in preset.stages}}}
    run_pack(config, tmp_path, log=lambda *_: None)
    return config


def new_model(pack_dir, preset=MINIGPT_V2, seed=0):
    packed = json.loads((pack_dir / "manifest.json").read_text())
    return build_model(preset, vocab_size=400, image_token_id=packed["image_token_id"],
                       pad_token_id=packed["pad_token_id"], seed=seed)


def quick(**overrides):
    return TrainConfig(**{"batch_size": 2, "checkpoint_every": 2, "progress": False, "tensorboard": False, **overrides})


# ---------------------------------------------------------------------------------------------
# The preset: MiniGPT-v2 as published
# ---------------------------------------------------------------------------------------------

def test_minigpt_v2_trains_its_llm_through_lora_as_published_in_all_three_stages():
    for size in ("published", "tiny"):
        stages = vlm.get_preset("minigpt-v2", size=size).stages
        assert [s.name for s in stages] == ["pretrain", "multitask", "instruct"]
        assert all(s.lora == LoRA(rank=64, alpha=16, dropout=0.05, targets=("q_proj", "v_proj"), group="llm")
                   for s in stages)
        assert all(s.trainable == ("connector", "llm") for s in stages)


# ---------------------------------------------------------------------------------------------
# One stage: what learns, what is saved, how it resumes
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_stage(tmp_path_factory):
    """MiniGPT-v2's first stage (LoRA as published) run uninterrupted, and run again killed after a
    mid-stage checkpoint (step 2) and resumed; the weights before, and the models after."""
    root = tmp_path_factory.mktemp("lora_stage")
    pack(root, MINIGPT_V2)
    pack_dir, stage = root / "pack" / "pretrain", dataclasses.replace(MINIGPT_V2.stage("pretrain"), max_steps=4)
    uninterrupted = new_model(pack_dir)
    before = snapshot(uninterrupted)
    summary = train_stage(uninterrupted, stage, pack_dir, root / "whole", quick())

    with killed_in_step(3):
        train_stage(new_model(pack_dir), stage, pack_dir, root / "killed", quick())
    mid_stage = {name: (root / "killed" / "checkpoint" / name).read_bytes() for name in ("model.safetensors", lora.ADAPTERS)}
    resumed = new_model(pack_dir, seed=5)  # everything must come from the checkpoint
    resumed_summary = train_stage(resumed, stage, pack_dir, root / "killed", quick())
    return dict(root=root, pack_dir=pack_dir, before=before, uninterrupted=uninterrupted, summary=summary,
                mid_stage=mid_stage, resumed=resumed, resumed_summary=resumed_summary)


def test_adapters_learn_and_every_weight_under_them_stays_bit_identical(lora_stage):
    """Before the merge (the mid-stage checkpoint's lora.safetensors): the adapted layers' own weights are
    the weights the stage started from, and the adapters moved away from B = 0."""
    from safetensors.torch import load

    adapters = load(lora_stage["mid_stage"][lora.ADAPTERS])
    before = lora_stage["before"]
    bases = {k: v for k, v in adapters.items() if k.endswith(".base_layer.weight")}
    assert len(bases) == MINIGPT_V2.llm["num_hidden_layers"] * len(ADAPTED)
    for key, weight in bases.items():
        assert torch.equal(weight, before[key.replace(".base_layer", "")]), key
    ups = [v for k, v in adapters.items() if ".lora_B." in k]
    assert len(ups) == len(bases) and all(v.shape[1] == 64 and v.abs().sum() > 0 for v in ups)


def test_a_lora_checkpoint_holds_the_merged_weights_under_their_plain_names(lora_stage):
    """The mid-stage model.safetensors: W + (alpha / rank) B A for each adapted layer, every other LLM and
    vision weight bit-identical to the start, the connector trained."""
    from safetensors.torch import load

    weights, adapters = (load(lora_stage["mid_stage"][name]) for name in ("model.safetensors", lora.ADAPTERS))
    before = lora_stage["before"]
    assert weights.keys() == before.keys()
    for key, value in weights.items():
        if key.startswith("language_model.") and adapted(key):
            layer = key.removesuffix(".weight")
            down, up = adapters[f"{layer}.lora_A.default.weight"], adapters[f"{layer}.lora_B.default.weight"]
            assert torch.equal(value, before[key] + (up @ down) * (16 / 64)), key
        elif key.startswith(("language_model.", "vision_tower.")):
            assert torch.equal(value, before[key]), key
    assert any(not torch.equal(weights[k], before[k]) for k in before if k.startswith("connector."))


def test_a_finished_lora_stage_leaves_a_plain_model_changed_only_in_the_connector_and_adapted_layers(lora_stage):
    model, before, root = lora_stage["uninterrupted"], lora_stage["before"], lora_stage["root"]
    after = snapshot(model)
    assert after.keys() == before.keys() and not lora.layers(model)  # adapters merged and taken out
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if not k.startswith("connector.")} == \
        {k for k in before if k.startswith("language_model.") and adapted(k)}
    final = root / "whole" / "checkpoint"
    assert not (final / lora.ADAPTERS).exists()  # the stage's result is the plain model alone
    assert load_file(final / "model.safetensors").keys() == before.keys()
    saved = load_model(root / "whole")
    assert all(torch.equal(v, after[k]) for k, v in saved.state_dict().items())
    summary = lora_stage["summary"]
    adapter_params = 2 * len(ADAPTED) * 64 * (64 + 64)  # 2 layers x (q, v) x (A: 64 x 64, B: 64 x 64)
    assert summary["lora"]["rank"] == 64
    assert summary["trainable_params"] == adapter_params + sum(p.numel() for p in model.connector.parameters())


def test_a_killed_lora_stage_resumes_to_the_same_losses_and_weights(lora_stage):
    root = lora_stage["root"]
    assert lora_stage["resumed_summary"]["resumed_from_step"] == 2
    assert [r["loss"] for r in read_log(root / "killed")] == [r["loss"] for r in read_log(root / "whole")]
    resumed, uninterrupted = snapshot(lora_stage["resumed"]), snapshot(lora_stage["uninterrupted"])
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_resuming_with_another_lora_setting_is_refused(lora_stage, tmp_path):
    import shutil

    shutil.copytree(lora_stage["root"] / "killed", tmp_path / "stage")
    (tmp_path / "stage" / vlm.train.COMPLETE).unlink()
    other = dataclasses.replace(MINIGPT_V2.stage("pretrain"), max_steps=4,
                                lora=dataclasses.replace(MINIGPT_V2_LORA, rank=8))
    with pytest.raises(ValueError, match=r"saved with lora=LoRA\(rank=64.*resumed with lora=LoRA\(rank=8"):
        train_stage(new_model(lora_stage["pack_dir"]), other, lora_stage["pack_dir"], tmp_path / "stage", quick())


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------

def minigpt_v2_with_adapters():
    """Tiny MiniGPT-v2 with its published LoRA attached, B drawn as training leaves it (no longer zero)."""
    model = build_model(MINIGPT_V2, vocab_size=64, image_token_id=63, pad_token_id=0, seed=0)
    lora.attach(model, MINIGPT_V2_LORA, seed=0)
    with torch.no_grad():
        for layer in lora.layers(model).values():
            layer.lora_B["default"].weight.normal_(std=0.05)
    return model


def test_merged_weights_give_the_logits_of_the_model_with_adapters():
    model = minigpt_v2_with_adapters().eval()  # LoRA dropout off
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.cat([torch.randint(1, 60, (2, 5), generator=generator), torch.full((2, 4), 63),
                           torch.randint(1, 60, (2, 7), generator=generator)], dim=1)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    with torch.no_grad():
        with_adapters = model(input_ids, pixels).logits
        plain_weights, _ = lora.merged(weights_to_save(model), model)
        lora.detach(model)
        without = model(input_ids, pixels).logits
        model.load_state_dict(plain_weights)
        merged = model(input_ids, pixels).logits
    assert not torch.allclose(without, with_adapters, atol=1e-3)  # the adapters do change the model
    assert (merged - with_adapters).abs().max() <= 1e-5


def test_merged_weights_are_the_ones_peft_merges_bit_for_bit():
    import copy

    model = minigpt_v2_with_adapters()
    plain_weights, _ = lora.merged(weights_to_save(model), model)
    by_peft = copy.deepcopy(model)
    for layer in lora.layers(by_peft).values():
        layer.merge()
    merged_by_peft = {k.replace(".base_layer", ""): v for k, v in by_peft.state_dict().items() if ".lora_" not in k}
    assert merged_by_peft.keys() == plain_weights.keys()
    assert all(torch.equal(plain_weights[k], v) for k, v in merged_by_peft.items())


# ---------------------------------------------------------------------------------------------
# `loom train`: the preset's LoRA, and LoRA turned on by the config
# ---------------------------------------------------------------------------------------------

def test_loom_train_runs_minigpt_v2s_three_lora_stages_and_its_loss_falls(tmp_path):
    config = pack(tmp_path, MINIGPT_V2)
    config["train"] = {"batch_size": 2, "stages": {s.name: {"max_steps": 6} for s in MINIGPT_V2.stages},
                       "evaluate": {"datasets": ["mix"], "split": "val", "max_new_tokens": 2}}
    logs = []
    manifest = run_train(config, tmp_path, log=logs.append)
    stages = manifest["stages"]
    assert [s["name"] for s in stages] == ["pretrain", "multitask", "instruct"]
    assert all(s["lora"] == {"rank": 64, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "v_proj"], "group": "llm"}
               for s in stages)
    assert sum("llm through LoRA rank 64 on q_proj, v_proj" in line for line in logs) == 3
    # the tiny LLM is random and frozen under its adapters, so it learns slowly: 5.61 -> 5.50 in 18 steps
    curves = [[loss for _, loss in s["loss_curve"]] for s in stages]
    assert all(curve[-1] < curve[0] for curve in curves) and curves[-1][-1] < curves[0][0] - 0.05, curves
    trained = load_model(tmp_path / "train" / "instruct")  # a plain model: no adapter layers, no peft needed
    assert not lora.layers(trained) and all(".lora_" not in k for k in trained.state_dict())


@pytest.mark.parametrize("setting, adapted_layers", [
    (True, {"q_proj", "v_proj"}),  # the preset's default: MiniGPT-v2's LoRA
    ({"rank": 8, "targets": ["q_proj", "o_proj"]}, {"q_proj", "o_proj"}),
])
def test_a_config_turns_lora_on_for_llava_15s_instruct_stage(setting, adapted_layers, tmp_path):
    preset = vlm.get_preset("llava-1.5", size="tiny")
    config = pack(tmp_path, preset, seq_len=256)
    config["train"] = {"batch_size": 2, "stages": {"pretrain": {"max_steps": 1},
                                                   "instruct": {"max_steps": 2, "lora": setting}},
                       "evaluate": {"datasets": ["mix"], "split": "val", "max_new_tokens": 2}}
    manifest = run_train(config, tmp_path, log=lambda *_: None)
    assert manifest["stages"][0]["lora"] is None
    assert manifest["stages"][1]["lora"]["rank"] == (64 if setting is True else 8)
    start, end = (load_model(tmp_path / "train" / name).language_model.state_dict() for name in ("pretrain", "instruct"))
    changed = {k.split(".")[-2] for k in start if not torch.equal(start[k], end[k])}
    assert changed == adapted_layers


def settings(stages: dict, preset=MINIGPT_V2):
    return stages_of(preset, train_settings({"train": {"stages": stages}}, preset))


def test_lora_true_false_and_a_mapping_over_the_stages_own():
    assert settings({"pretrain": {"lora": False}})[0].lora is None  # MiniGPT-v2 with its whole LLM trained
    assert settings({"pretrain": {"lora": True}})[0].lora == MINIGPT_V2_LORA
    assert settings({"pretrain": {"lora": {"rank": 16, "dropout": 0.0}}})[0].lora == \
        LoRA(rank=16, alpha=16, dropout=0.0, targets=("q_proj", "v_proj"), group="llm")
    flant5 = vlm.get_preset("blip2-flant5", size="tiny")  # T5 names its projections q and v
    lora_on = settings({"generative": {"trainable": ["connector", "projection", "llm"], "lora": True}}, flant5)
    assert lora_on[1].lora.targets == ("q", "v")


@pytest.mark.parametrize("given, wrong", [
    ({"rank": 0}, r"train.stages.instruct.lora.rank: 0; expected a whole number >= 1"),
    ({"rank": 8.5}, r"train.stages.instruct.lora.rank: 8.5; expected a whole number"),
    ({"alpha": -1}, r"train.stages.instruct.lora.alpha: -1; expected a number > 0"),
    ({"dropout": 1.5}, r"train.stages.instruct.lora.dropout: 1.5; expected a probability in \[0, 1\)"),
    ({"targets": "q_proj"}, r"train.stages.instruct.lora.targets: 'q_proj'; expected a non-empty list"),
    ({"targets": []}, r"train.stages.instruct.lora.targets: \[\]; expected a non-empty list"),
    ({"targets": ["query"]}, r"train.stages.instruct.lora.targets: 'query' names no layer of group 'llm'; "
                             r"its linear layers are named \[.*'q_proj'"),
    ({"targets": ["self_attn"]}, r"lora.targets: 'self_attn' names layers that are not linear"),
    ({"group": "wings"}, r"train.stages.instruct.lora.group: 'wings'; expected one of"),
    ({"group": "vision"}, r"train.stages.instruct.lora.group: 'vision' is frozen in this stage \(it trains "
                          r"\['connector', 'llm'\]\); add it to train.stages.instruct.trainable"),
    ({"rnak": 8}, r"train.stages.instruct.lora: unknown key\(s\) \['rnak'\]; expected some of \['rank'"),
    ("yes", r"train.stages.instruct.lora: 'yes'; expected true, false or a mapping of rank, alpha"),
])
def test_a_wrong_lora_setting_is_refused_naming_its_key(given, wrong):
    preset = vlm.get_preset("llava-1.5", size="tiny")
    with pytest.raises(ConfigError, match=wrong):
        settings({"instruct": {"lora": given}}, preset)


def test_lora_on_a_stage_that_freezes_the_llm_is_refused():
    preset = vlm.get_preset("llava-1.5", size="tiny")
    with pytest.raises(ConfigError, match=r"train.stages.pretrain.lora.group: 'llm' is frozen in this stage \(it "
                                          r"trains \['connector'\]\)"):
        settings({"pretrain": {"lora": True}}, preset)
