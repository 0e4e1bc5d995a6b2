"""`loom export RUN --to hf OUT`: a model trained by `loom train` on the shapes world, loaded by transformers as it
is, answers the held-out questions as Loom's own evaluation answered them, from the same pixels and token ids."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import vlm
from jobs.cli import main
from pipelines.render import read_render_output

HELD_OUT = 4  # questions Loom's evaluation answers, and the export answers again
STEPS = 2  # optimizer steps per stage: a trained checkpoint, not a good one; the answers are compared, not scored
WORLD = {"demo_data": {"seed": 8, "pair_scenes": 0, "train_scenes": 10, "val_scenes": 2},
         "render": {"datasets": [
             {"adapter": "vqav2", "questions": "{out}/demo/vqav2/v2_OpenEnded_mscoco_train2014_questions.json",
              "annotations": "{out}/demo/vqav2/v2_mscoco_train2014_annotations.json",
              "images": "{out}/demo/coco/train2014", "split": "train"},
             {"adapter": "vqav2", "questions": "{out}/demo/vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
              "annotations": "{out}/demo/vqav2/v2_mscoco_val2014_annotations.json",
              "images": "{out}/demo/coco/val2014", "split": "val", "template": "vqa_en_04"}]}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A shapes world rendered into VQA instructions by `loom run` (its images are not all square)."""
    root = tmp_path_factory.mktemp("export")
    (root / "world.yaml").write_text(yaml.safe_dump(WORLD))
    assert main(["run", str(root / "world.yaml"), "--out", str(root / "world")]) == 0
    return root


@pytest.fixture(scope="module")
def exported(world):
    """name -> (run folder, export folder): the tiny preset trained by `loom run` (pack + train), then exported
    by `loom export RUN --to hf OUT`; each trained once per module."""
    done = {}

    def get(name: str):
        if name not in done:
            preset = vlm.get_preset(name, size="tiny")
            run, out = world / name, world / f"{name}-hf"
            shutil.copytree(world / "world" / "render", run / "render")  # the evaluation reads RUN/render
            config = {"pack": {"preset": preset.name, "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 512,
                               "outputs": {s.data: {"datasets": ["vqav2"], "split": "train"} for s in preset.stages}},
                      "train": {"stages": {s.name: {"max_steps": STEPS} for s in preset.stages},
                                # the copied render's images stayed in the world's run folder: re-pointed there
                                "image_roots": {"vqav2": str(world / "world" / "demo" / "coco" / "train2014"),
                                                "vqav2.val": str(world / "world" / "demo" / "coco" / "val2014")},
                                "evaluate": {"datasets": ["vqav2"], "limit": HELD_OUT, "examples": HELD_OUT}}}
            (world / f"{name}.yaml").write_text(yaml.safe_dump(config))
            assert main(["run", str(world / f"{name}.yaml"), "--out", str(run)]) == 0
            assert main(["export", str(run), "--to", "hf", str(out)]) == 0
            done[name] = run, out
        return done[name]
    return get


def held_out(run):
    """The questions Loom's evaluation answered (its records, in its order) and its answers."""
    records = [r for r in read_render_output(run / "render", split="val", datasets=["vqav2"], task="vqa")
               if r["answers"]][:HELD_OUT]
    # records name their images {root, path}: the folders the run's train.image_roots gives (the world's)
    roots = yaml.safe_load((run.parent / f"{run.name}.yaml").read_text())["train"]["image_roots"]
    records = [{**r, "images": [{**image, "path": str(Path(roots[image["root"]]) / image["path"]), "root": None}
                                for image in r["images"]]} for r in records]
    evaluation = json.loads((run / "train" / "manifest.json").read_text())["evaluation"]
    return records, [example["prediction"] for example in evaluation["examples"]]


def chat(record, with_image=True):
    """The record's question as transformers' chat messages: an image item, then the text."""
    question = record["messages"][0]["content"].removeprefix("<image>\n")
    image = {"type": "image", "image": Image.open(record["images"][0]["path"])} if with_image else {"type": "image"}
    return [{"role": "user", "content": [image, {"type": "text", "text": question}]}]


def loom_side(run):
    """Loom's own model and prompt encoder for a run: what its evaluation used."""
    from jobs.train import trained_model

    return trained_model(run)


def loom_prompt(encoder, record) -> list[int]:
    return encoder.encode_prompt(record["messages"][:1], task=record["task"], images=record["images"][:1]).tolist()


def continuation(ids, prompt_length: int, encoder_decoder: bool) -> list[int]:
    """New tokens of a generate output (a decoder-only model returns the prompt too, T5 its decoder start)."""
    return ids[1:] if encoder_decoder else ids[prompt_length:]


# ---------------------------------------------------------------------------------------------
# LLaVA-1.5: the whole way, through pipeline("image-text-to-text")
# ---------------------------------------------------------------------------------------------

def test_llava_export_answers_through_the_pipeline_as_looms_evaluation_did(exported):
    from transformers import pipeline

    run, out = exported("llava-1.5")
    records, loom_answers = held_out(run)
    answer = pipeline("image-text-to-text", model=str(out))
    answers = [answer(text=chat(record), max_new_tokens=8, return_full_text=False)[0]["generated_text"].strip()
               for record in records]
    assert answers == loom_answers and len(answers) == HELD_OUT


def test_llava_export_continues_a_prompt_token_for_token_as_loom_does(exported):
    """Eight greedy tokens, both stopping only at the padding id: a longer check than the (short) answers."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm.generate import generate
    from vlm.images import ImageProcessor

    run, out = exported("llava-1.5")
    records, _ = held_out(run)
    model, encoder = loom_side(run)
    processor, hf = AutoProcessor.from_pretrained(out), AutoModelForImageTextToText.from_pretrained(out)
    for record in records:
        inputs = processor.apply_chat_template(chat(record), tokenize=True, return_dict=True, return_tensors="pt")
        pixels = ImageProcessor(model.preset)(record["images"][0])[None]
        ours = generate(model, [loom_prompt(encoder, record)], pixels, model.pad_token_id, model.pad_token_id, 8)[0]
        theirs = hf.generate(**inputs, max_new_tokens=8, eos_token_id=model.pad_token_id)[0].tolist()
        assert continuation(theirs, inputs["input_ids"].shape[1], False) == ours


def test_llava_processor_gives_looms_token_ids_and_pixels_and_the_model_its_logits(exported):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm.images import ImageProcessor

    run, out = exported("llava-1.5")
    records, _ = held_out(run)
    model, encoder = loom_side(run)
    processor, hf = AutoProcessor.from_pretrained(out), AutoModelForImageTextToText.from_pretrained(out)
    assert {type(processor).__name__, type(processor.image_processor).__name__} == {"LlavaProcessor",
                                                                                      "LlavaImageProcessorPil"}
    assert any(Image.open(r["images"][0]["path"]).size[0] != Image.open(r["images"][0]["path"]).size[1]
               for r in records)  # padding to a square is exercised
    for record in records:
        inputs = processor.apply_chat_template(chat(record), tokenize=True, return_dict=True, return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == loom_prompt(encoder, record)
        pixels = ImageProcessor(model.preset)(record["images"][0])
        assert torch.equal(inputs["pixel_values"][0], pixels)
        with torch.no_grad():
            theirs = hf(**inputs).logits
            ours = model(inputs["input_ids"], pixels[None]).logits
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_llava_export_config_says_64_image_tokens_and_the_trained_tokenizers_ids(exported):
    from tokenizers import Tokenizer

    run, out = exported("llava-1.5")
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    trained = Tokenizer.from_file(str(run / "pack" / "pretrain" / "tokenizer" / "tokenizer.json"))
    assert config["image_seq_length"] == 64 and config["image_token_index"] == trained.token_to_id("<image>")
    text = config["text_config"]
    assert (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"]) == tuple(
        trained.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    assert generation["eos_token_id"] == trained.token_to_id("</s>")
    assert generation["bad_words_ids"] == [[trained.token_to_id("<image>")]]  # as Loom's decoding masks it


# ---------------------------------------------------------------------------------------------
# BLIP-2 (OPT, FlanT5), InstructBLIP (Vicuna, FlanT5), Qwen2-VL: AutoProcessor and the model's generate
# ---------------------------------------------------------------------------------------------

def hf_inputs(processor, record):
    """What transformers' processor makes of a held-out question. BLIP-2's and InstructBLIP's processors drop
    their chat template on loading, so their tokenizer's (the same file) lays the prompt out."""
    if processor.chat_template is not None:
        return processor.apply_chat_template(chat(record), tokenize=True, return_dict=True, return_tensors="pt")
    prompt = processor.tokenizer.apply_chat_template(chat(record, with_image=False), tokenize=False)
    return processor(images=Image.open(record["images"][0]["path"]), text=prompt, return_tensors="pt")


@pytest.mark.parametrize("name", ["blip2-opt", "blip2-flant5", "instructblip-vicuna", "instructblip-flant5"])
def test_a_q_former_export_answers_as_looms_evaluation_did(name, exported):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run, out = exported(name)
    records, loom_answers = held_out(run)
    _, encoder = loom_side(run)
    processor, hf = AutoProcessor.from_pretrained(out), AutoModelForImageTextToText.from_pretrained(out)
    encoder_decoder = vlm.get_preset(name).encoder_decoder
    answers = []
    for record in records:
        inputs = hf_inputs(processor, record)
        assert inputs["input_ids"][0].tolist() == loom_prompt(encoder, record)  # query tokens after BOS, as trained
        ids = hf.generate(**inputs, max_new_tokens=8)[0].tolist()
        new = continuation(ids, inputs["input_ids"].shape[1], encoder_decoder)
        answers.append(processor.tokenizer.decode(new, skip_special_tokens=True).strip())
    assert answers == loom_answers


@pytest.mark.parametrize("name", ["blip2-opt", "blip2-flant5", "instructblip-vicuna", "instructblip-flant5"])
def test_a_q_former_export_answers_through_the_pipeline_as_looms_evaluation_did(name, exported):
    """pipeline("image-text-to-text") with the image and the prompt the exported tokenizer's chat template writes
    (these processors drop the template on loading, so the pipeline takes the prompt as text)."""
    from transformers import AutoTokenizer, pipeline

    run, out = exported(name)
    records, loom_answers = held_out(run)
    answer, tokenizer = pipeline("image-text-to-text", model=str(out)), AutoTokenizer.from_pretrained(out)
    answers = []
    for record in records:
        prompt = tokenizer.apply_chat_template(chat(record, with_image=False), tokenize=False)
        reply = answer(images=Image.open(record["images"][0]["path"]), text=prompt, max_new_tokens=8,
                       return_full_text=False)
        answers.append(reply[0]["generated_text"].strip())
    assert answers == loom_answers and len(answers) == HELD_OUT


@pytest.mark.parametrize("name", ["blip2-opt", "instructblip-vicuna"])
def test_a_q_former_export_continues_a_prompt_token_for_token_as_loom_does(name, exported):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from pipelines.qformer_text import QFormerInstructions, qformer_text
    from vlm.evaluate import image_inputs
    from vlm.generate import generate
    from vlm.images import ImageProcessor

    run, out = exported(name)
    records, _ = held_out(run)
    model, encoder = loom_side(run)
    processor, hf = AutoProcessor.from_pretrained(out), AutoModelForImageTextToText.from_pretrained(out)
    instructions = None
    if model.preset.qformer_text == "instruction":
        instructions = QFormerInstructions(str(run / "pack" / "qformer_tokenizer"), 64)
    for record in records:
        inputs = hf_inputs(processor, record)
        instruction, pad = None, 0
        if instructions is not None:  # what the Q-Former reads: the instruction alone
            instruction, pad = [instructions(qformer_text(record["messages"][:1], "instruction"))], instructions.pad
        pixels, extra = image_inputs(model.preset, ImageProcessor(model.preset), record["images"][:1], instruction, pad)
        assert torch.equal(inputs["pixel_values"], pixels)
        if instructions is not None:  # the Q-Former reads the instruction alone, as in training
            assert inputs["qformer_input_ids"].tolist() == extra["qformer_input_ids"].tolist()
        ours = generate(model, [loom_prompt(encoder, record)], pixels, model.pad_token_id, model.pad_token_id, 8,
                        **extra)[0]
        theirs = hf.generate(**inputs, max_new_tokens=8, eos_token_id=model.pad_token_id)[0].tolist()
        assert continuation(theirs, inputs["input_ids"].shape[1], False) == ours


def qwen2_vl_inputs(out, record, image_token_id):
    """Qwen2VLProcessor's work done by hand from the exported parts: in transformers 5 the processor class needs
    torchvision (for videos), which Loom does not install; AutoProcessor is checked where torchvision is."""
    from transformers import AutoImageProcessor, AutoTokenizer

    images, tokenizer = AutoImageProcessor.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    pixels = images(Image.open(record["images"][0]["path"]), return_tensors="pt")
    prompt = tokenizer.apply_chat_template(chat(record, with_image=False), tokenize=False)
    placeholders = int(pixels["image_grid_thw"].prod()) // images.merge_size ** 2
    ids = tokenizer(prompt.replace("<image>", "<image>" * placeholders), return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **pixels,
            "mm_token_type_ids": (ids == image_token_id).int()}


def test_qwen2_vl_export_answers_and_continues_as_loom_does_at_native_resolution(exported):
    from transformers import AutoModelForImageTextToText

    from vlm.evaluate import image_inputs
    from vlm.generate import generate
    from vlm.images import ImageProcessor

    run, out = exported("qwen2-vl")
    records, loom_answers = held_out(run)
    model, encoder = loom_side(run)
    hf = AutoModelForImageTextToText.from_pretrained(out)
    answers = []
    for record in records:
        inputs = qwen2_vl_inputs(out, record, model.image_token_id)
        assert inputs["input_ids"][0].tolist() == loom_prompt(encoder, record)
        pixels, extra = image_inputs(model.preset, ImageProcessor(model.preset), record["images"][:1])
        assert torch.equal(inputs["pixel_values"], pixels)
        assert torch.equal(inputs["image_grid_thw"], extra["image_grid_thw"])
        length = inputs["input_ids"].shape[1]
        answers.append(hf.generate(**inputs, max_new_tokens=8)[0, length:])
        ours = generate(model, [loom_prompt(encoder, record)], pixels, model.pad_token_id, model.pad_token_id, 8,
                        **extra)[0]
        assert hf.generate(**inputs, max_new_tokens=8, eos_token_id=model.pad_token_id)[0, length:].tolist() == ours
    tokenizer = encoder.tokenizer
    assert [tokenizer.decode(a.tolist(), skip_special_tokens=True).strip() for a in answers] == loom_answers


def test_qwen2_vl_export_loads_with_auto_processor_where_torchvision_is_installed(exported):
    pytest.importorskip("torchvision")
    from transformers import AutoProcessor

    run, out = exported("qwen2-vl")
    records, _ = held_out(run)
    model, _ = loom_side(run)
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    inputs = processor.apply_chat_template(chat(records[0]), tokenize=True, return_dict=True, return_tensors="pt")
    expected = qwen2_vl_inputs(out, records[0], model.image_token_id)
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()


# ---------------------------------------------------------------------------------------------
# Architectures without a transformers class, and sources that hold no checkpoint
# ---------------------------------------------------------------------------------------------

def checkpoint_folder(name, folder):
    """A checkpoint folder as `loom train` writes one (config.json, model.safetensors, tokenizer/), untrained."""
    from pipelines.tokenizer_training import train_bpe
    from templates.chat import get_chat_format
    from vlm.checkpoint import save_pretrained

    preset = vlm.get_preset(name, size="tiny")
    chat_format = get_chat_format(preset.chat_format)
    texts = chat_format.strings() + ["What colour is the star?", "red", "How many shapes are there?", "3"]
    tokenizer = train_bpe(texts, 300, folder.with_name("tokenizer"), bos=chat_format.bos, eos=chat_format.eos)
    model = vlm.build_model(preset, vocab_size=tokenizer.get_vocab_size(),
                            image_token_id=tokenizer.token_to_id("<image>"), pad_token_id=tokenizer.token_to_id("<pad>"))
    save_pretrained(model, folder)
    shutil.copytree(folder.with_name("tokenizer"), folder / "tokenizer")
    return model


def test_an_architecture_without_a_transformers_class_exports_in_looms_format_and_says_why(tmp_path, capsys):
    from transformers import AutoTokenizer

    model = checkpoint_folder("minigpt4", tmp_path / "checkpoint")
    assert main(["export", str(tmp_path / "checkpoint"), "--to", "hf", str(tmp_path / "out")]) == 0
    assert "transformers has no MiniGPT-4 class" in capsys.readouterr().out
    loaded = vlm.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nWhat colour is the star?"}],
                                           tokenize=False)
    assert prompt == "<s>###Human: <Img><image></Img> What colour is the star? ###Assistant:"
    record = json.loads((tmp_path / "out" / "loom_export.json").read_text())
    assert record["format"] == "loom" and "MiniGPT-4" in record["reason"]


def test_an_export_over_the_folder_it_exports_is_refused(tmp_path, capsys):
    checkpoint_folder("llava-1.5", tmp_path / "run" / "checkpoint")
    assert main(["export", str(tmp_path / "run" / "checkpoint"), str(tmp_path / "run")]) == 2
    assert "would replace" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nowhere", "no such folder"),
    (lambda root: root, "neither a run folder"),
    (lambda root: (root / "train").mkdir() or root, "training has not finished"),
])
def test_a_source_holding_no_checkpoint_is_refused_naming_it(make, message, tmp_path, capsys):
    source = make(tmp_path)
    assert main(["export", str(source), "--to", "hf", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"loom: export: {source}") and message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_export_imports_without_ray_polars_or_pipelines():
    from test_layering import run_blocked

    result = run_blocked({"ray", "polars", "img2dataset", "pipelines", "jobs", "webdataset", "pyarrow"},
                         "import vlm.export, templates.chat")
    assert result.returncode == 0, result.stderr
