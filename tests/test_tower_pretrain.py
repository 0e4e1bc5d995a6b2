"""`loom tower`: a preset's vision tower pretrained with CLIP's loss on pairs shards, saved as a transformers
checkpoint folder that `train.init.vision` (and `CLIPVisionModel.from_pretrained`) reads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from jobs.cli import main as loom
from test_render_pairs import write_ingest_output

quiet = lambda *_: None  # noqa: E731


def write_config(folder: Path, **sections) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.fixture(scope="module")
def tower_run(tmp_path_factory):
    """`loom tower` once over 96 shapes-world pairs (16 held out), for LLaVA-1.5-tiny's CLIP tower."""
    folder = tmp_path_factory.mktemp("tower")
    ingest = write_ingest_output(folder / "ingest", (40, 40, 16))
    config = write_config(folder, tower={"input": str(ingest), "preset": "llava-1.5-tiny", "epochs": 15,
                                         "batch_size": 16, "held_out": 16, "lr": 2.0e-3})
    assert loom(["tower", str(config), "--out", str(folder / "run")]) == 0
    return folder / "run" / "tower", config


def test_the_clip_loss_falls_on_shapes_world_pairs(tower_run):
    tower, _ = tower_run
    manifest = json.loads((tower / "manifest.json").read_text())
    losses = [loss for _, loss in manifest["loss_curve"]]
    assert manifest["rows_in"] == 96 and manifest["rows_out"] == 80 and manifest["held_out_pairs"] == 16
    assert len(losses) == 15 * (80 // 16)  # every epoch's full batches
    assert losses[0] == pytest.approx(manifest["pretrain"]["first_loss"])
    # from about log(16) (a random model's guess among 16 captions) to well below it
    assert sum(losses[:5]) / 5 > 2.4 and sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_held_out_retrieval_is_scored_against_chance(tower_run):
    scores = json.loads((tower_run[0] / "manifest.json").read_text())["retrieval"]
    assert scores["pairs"] == 16 and scores["chance"] == pytest.approx(1 / 16, abs=1e-4)
    assert 0 <= scores["image_to_text"] <= 1 and 0 <= scores["text_to_image"] <= 1


def test_the_folder_is_a_clip_checkpoint_that_clip_vision_model_reads(tower_run):
    from transformers import CLIPModel, CLIPVisionModel, PreTrainedTokenizerFast

    tower, _ = tower_run
    saved = load_file(tower / "model.safetensors")
    vision = CLIPVisionModel.from_pretrained(tower)
    assert (vision.config.hidden_size, vision.config.patch_size, vision.config.image_size,
            vision.config.num_hidden_layers) == (64, 8, 64, 3)  # LLaVA-1.5-tiny's tower, as the quickstart trains it
    for name, tensor in vision.state_dict().items():
        assert torch.equal(tensor, saved[f"vision_model.{name}"]), name
    clip = CLIPModel.from_pretrained(tower)  # the whole CLIP, with its caption tokenizer beside it
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tower)
    ids = tokenizer("A red circle on a white background.")["input_ids"] + [tokenizer.eos_token_id]
    assert clip.get_text_features(input_ids=torch.tensor([ids])).pooler_output.shape == (1, 64)


def test_train_init_vision_loads_the_tower_into_the_preset(tower_run):
    from transformers import CLIPVisionModel

    from vlm.checkpoint import init_from_pretrained
    from vlm.builders import build_model
    from vlm.preset import get_preset

    tower, _ = tower_run
    model = build_model(get_preset("llava-1.5-tiny"), 512, 4, 3, seed=0)
    loaded = init_from_pretrained(model, vision=tower, log=quiet)
    assert loaded == {"vision": str(tower)}
    pretrained = CLIPVisionModel.from_pretrained(tower).state_dict()
    for name, tensor in model.vision_tower.state_dict().items():
        assert torch.equal(tensor, pretrained[name]), name


def test_the_run_report_shows_the_tower_stage(tower_run):
    run = tower_run[0].parent  # `loom tower` writes the run's report, as every stage command does
    report = json.loads((run / "report.json").read_text())
    assert report["stages"]["tower"]["retrieval"]["pairs"] == 16
    assert "CLIP loss" in (run / "report.html").read_text() and "held-out pairs" in (run / "report.html").read_text()


def test_a_second_run_with_the_same_config_and_pairs_is_skipped(tower_run, capsys):
    tower, config = tower_run
    before = (tower / "model.safetensors").stat().st_mtime_ns
    assert loom(["tower", str(config), "--out", str(tower.parent)]) == 0
    assert "tower: complete" in capsys.readouterr().out
    assert (tower / "model.safetensors").stat().st_mtime_ns == before


def test_an_eva_tower_pretrains_and_loads_into_blip2(tmp_path):
    from transformers import Blip2VisionModel

    from jobs.tower import run_tower
    from vlm.checkpoint import init_from_pretrained
    from vlm.builders import build_model
    from vlm.preset import get_preset

    ingest = write_ingest_output(tmp_path / "ingest", (24,), seed=1)
    manifest = run_tower({"tower": {"input": str(ingest), "preset": "blip2-opt-tiny", "max_steps": 3,
                                    "batch_size": 8, "held_out": 8}}, tmp_path / "run", log=quiet)
    assert manifest["vision_kind"] == "eva" and manifest["pretrain"]["steps"] == 3
    tower = tmp_path / "run" / "tower"
    eva = Blip2VisionModel.from_pretrained(tower)  # EVA ViT as BLIP-2 ships it
    model = build_model(get_preset("blip2-opt-tiny"), 512, 4, 3, seed=0)
    init_from_pretrained(model, vision=tower, log=quiet)
    for name, tensor in model.vision_tower.state_dict().items():
        assert torch.equal(tensor, eva.state_dict()[name]), name


def test_a_run_may_name_the_tower_it_pretrains_before_it_exists(tmp_path):
    from jobs.config import ConfigError
    from jobs.run import check_stages

    out = tmp_path / "run"
    config = {"tower": {}, "pack": {"preset": "llava-1.5-tiny", "outputs": {"pretrain": {"datasets": ["pairs"]},
                                                                            "instruct": {"datasets": ["vqav2"]}}},
              "train": {"init": {"vision": str(out / "tower")}}}
    check_stages(config, str(out), ["tower", "pack", "train"])  # tower writes it first: accepted
    with pytest.raises(ConfigError, match=r"train\.init\.vision: .*/tower: no such folder"):
        check_stages(config, str(out), ["pack", "train"])  # nothing of this run writes it


def test_a_tower_without_a_pooled_embedding_is_refused_naming_the_key(tmp_path, capsys):
    config = write_config(tmp_path, tower={"preset": "qwen2-vl-tiny"})
    assert loom(["tower", str(config), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("loom: config error: tower.preset: qwen2-vl-tiny's qwen2_vl tower") and "\n" not in error


def test_holding_out_more_pairs_than_there_are_is_refused(tmp_path, capsys):
    ingest = write_ingest_output(tmp_path / "ingest", (10,))
    config = write_config(tmp_path, tower={"input": str(ingest), "preset": "llava-1.5-tiny", "held_out": 9})
    assert loom(["tower", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "loom: config error: tower.held_out: 9 of the 10 pairs" in capsys.readouterr().err
