"""`loom lm`: a preset's LLM pretrained on the render's text with each image's scene written where the image
stood, saved as a transformers checkpoint folder that `train.init.llm` reads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from jobs.cli import main as loom
from jobs.config import ConfigError

quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A run folder with a shapes world of 24 training scenes rendered (COCO captions + VQAv2 questions) and
    packed for BLIP-2 OPT, tiny."""
    from jobs.pack import run_pack
    from jobs.render import run_render
    from jobs.run import run_demo_data

    run = tmp_path_factory.mktemp("lm")
    run_demo_data({"demo_data": {"seed": 0, "pair_scenes": 4, "train_scenes": 24, "val_scenes": 4}}, str(run), quiet)
    demo = run / "demo"
    run_render({"render": {"seed": 0, "ray": "never", "datasets": [
        {"adapter": "coco_captions", "annotations": f"{demo}/coco/annotations/captions_train2014.json",
         "images": f"{demo}/coco/train2014", "split": "train"},
        {"adapter": "vqav2", "questions": f"{demo}/vqav2/v2_OpenEnded_mscoco_train2014_questions.json",
         "annotations": f"{demo}/vqav2/v2_mscoco_train2014_annotations.json", "images": f"{demo}/coco/train2014",
         "split": "train"}]}}, run, quiet)
    run_pack({"pack": {"preset": "blip2-opt-tiny", "seq_len": 256, "ray": "never",
                       "tokenizer": {"train": {"vocab_size": 600}},
                       "outputs": {"instruct": {"datasets": ["coco_caption", "vqav2"]}}}}, run, quiet)
    return run


@pytest.fixture(scope="module")
def records(world):
    from pipelines.render import read_render_output

    return read_render_output(world / "render")


@pytest.fixture(scope="module")
def lm_run(world):
    """`loom lm` through the command, 12 steps, 4 images held out."""
    config = world / "lm.yaml"
    config.write_text(yaml.safe_dump({"lm": {"max_steps": 12, "batch_size": 2, "seq_len": 256, "held_out": 4,
                                                   "shapes_world_scenes": 5}}))
    assert loom(["lm", str(config), "--out", str(world)]) == 0
    return world / "lm"


def test_a_question_reads_its_own_scenes_captions_where_its_image_was(records):
    from pipelines.scene_text import described_records, image_identity, scene_captions

    captions = scene_captions(records)
    rows, _ = described_records(records, seed=0)
    question = next(r for r in records if r["task"] == "vqa")
    described = next(r for r in rows if r["id"] == f"{question['id']}:described")
    description, asked = described["messages"][0]["content"].split("\n", 1)
    assert asked == question["messages"][0]["content"].split("\n", 1)[1]  # the question follows the scene
    own = captions[image_identity(question["images"][0])]
    picked = [c for c in own if c in description]
    assert picked and len(" ".join(picked)) == len(description)  # 1 to all of its captions, nothing else
    assert described["images"] == [] and described["messages"][1] == question["messages"][1]


def test_a_caption_never_sits_in_its_own_description(records):
    from pipelines.scene_text import described_records

    rows = {r["id"]: r for r in described_records(records, seed=0)[0]}
    for record in (r for r in records if r["task"] == "captioning"):
        caption = record["messages"][1]["content"]
        assert caption not in rows[f"{record['id']}:described"]["messages"][0]["content"]
        plain = rows[f"{record['id']}:plain"]  # and once alone, with no image and no description
        assert "<image>" not in plain["messages"][0]["content"] and plain["messages"][1]["content"] == caption


def test_an_image_with_no_caption_is_dropped_with_its_reason(records):
    from pipelines.scene_text import described_records

    questions = [r for r in records if r["task"] == "vqa"]
    rows, dropped = described_records(questions, seed=0, captions={})
    assert rows == [] and dropped == {"no_caption_of_image": len(questions)}


def test_a_records_description_depends_on_the_seed_and_its_id_alone(records):
    from pipelines.scene_text import described_records

    def by_id(rows):
        return {r["id"]: r["messages"] for r in rows}

    forward = by_id(described_records(records, seed=3)[0])
    assert forward == by_id(described_records(list(reversed(records)), seed=3)[0])
    assert forward != by_id(described_records(records, seed=4)[0])


def test_text_only_shapes_world_scenes_are_worded_as_the_render_words_them():
    from pipelines.scene_text import described_records, shapes_world_text
    from templates.library import template_by_id

    rows = shapes_world_text(3, seed=0)
    assert {r["task"] for r in rows} == {"captioning", "vqa"} and {r["split"] for r in rows} == {"train"}
    assert all(template_by_id(r["template_id"]) for r in rows)  # Loom's own templates
    assert shapes_world_text(3, seed=0) == rows and shapes_world_text(3, seed=1) != rows
    described, dropped = described_records(rows, seed=0)
    questions = [r for r in described if r["task"] == "vqa"]
    assert dropped == {} and questions and all("<image>" not in r["messages"][0]["content"] for r in described)
    colour = next(r for r in questions if r["question_type"] == "colour")
    assert colour["answers"][0] in colour["messages"][0]["content"]  # the answer is there to be read


def test_loom_lm_writes_a_causal_lm_folder_transformers_reads(lm_run):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(lm_run)
    assert type(llm).__name__ == "OPTForCausalLM" and llm.config.hidden_size == 64
    saved = load_file(lm_run / "model.safetensors")
    for name, tensor in llm.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name


def test_train_init_llm_starts_the_preset_from_it(lm_run, world):
    from transformers import AutoModelForCausalLM

    from vlm import build_model
    from vlm.checkpoint import init_from_pretrained
    from vlm.preset import get_preset

    packed = json.loads((world / "pack" / "instruct" / "manifest.json").read_text())
    vocab = json.loads((world / "pack" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    model = build_model(get_preset("blip2-opt-tiny"), len(vocab), packed["image_token_id"], packed["pad_token_id"],
                        seed=5)
    assert init_from_pretrained(model, llm=lm_run, log=quiet) == {"llm": str(lm_run)}
    pretrained = AutoModelForCausalLM.from_pretrained(lm_run).state_dict()
    for name, tensor in model.language_model.state_dict().items():
        assert torch.equal(tensor, pretrained[name]), name


def test_the_manifest_counts_records_steps_and_held_out_answers(lm_run):
    manifest = json.loads((lm_run / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 12 and len(manifest["loss_curve"]) == 12
    assert manifest["rows_out"] > manifest["rows_in"] > 0  # every record described, and each caption alone too
    held_out = manifest["held_out"]
    assert held_out["questions"] > 0
    for figure in ("from_description", "blind"):
        assert 0 <= held_out[figure] <= 1
        assert set(held_out[f"{figure}_by_question_type"]) <= {"colour", "shape", "count", "exists", "position"}
    assert manifest["init"] == f"train.init.llm: {lm_run}"


def test_a_second_run_with_the_same_config_is_skipped(lm_run, world):
    from jobs.lm import run_lm

    said = []
    run_lm({"lm": {"max_steps": 12, "batch_size": 2, "seq_len": 256, "held_out": 4, "shapes_world_scenes": 5}}, world,
           said.append)
    assert said == [f"lm: complete in {lm_run} (same config and inputs); skipped"]


def test_holding_out_every_image_is_refused_naming_the_key(world, tmp_path):
    from jobs.lm import run_lm

    with pytest.raises(ConfigError, match=r"^lm.held_out: 24 of the 24 images in split 'train' of .*; hold out fewer"):
        run_lm({"lm": {"held_out": 24, "input": str(world / "render"), "pack": str(world / "pack")}}, tmp_path)


def test_no_pack_output_is_refused_naming_the_key(world, tmp_path):
    from jobs.lm import run_lm

    with pytest.raises(ConfigError, match=r"^lm.pack: .*: no finished pack output .*run `loom pack` first"):
        run_lm({"lm": {"input": str(world / "render")}}, tmp_path)


def test_a_bad_value_is_one_schema_line(tmp_path):
    from jobs.lm import lm_settings

    with pytest.raises(ConfigError, match=r"lm.held_out"):
        lm_settings({"lm": {"held_out": -1}})
