"""`loom lm`: the render's text → a preset's LLM pretrained to answer from a scene described in its prompt.

Frozen-LLM architectures (BLIP-2, InstructBLIP, MiniGPT-4) start from a pretrained LLM and never change it;
their connector learns to fill the LLM's image slot with something it already reads. This stage makes that
LLM from the run's own records: each image's captions written where its `<image>` stood, before the
question and answer (pipelines/scene_text.py), plus each caption alone; packed in the preset's chat format
with the pack stage's tokenizer, and trained as a stage of its own (vlm/language_pretraining.py).

It keeps `held_out` images aside and answers their questions twice: with their description in the prompt
(what the LLM reads from context) and blind (what it guesses from the question alone). OUT/lm/ is a
transformers checkpoint folder of the LLM that `train.init.llm` reads; OUT/lm/text/ the records it read,
OUT/lm/pack/text/ them packed, OUT/lm/training/ the stage's log.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from jobs.config import ConfigError, section
from pipelines.manifest import StageRecord, is_complete, manifest_hash, read_manifest, start_or_resume


def lm_settings(config: dict) -> dict:
    """The lm section over its defaults (jobs/schema.py)."""
    return section(config, "lm")


def lm_output(out: str | Path) -> Path:
    """Where `loom lm` writes: the folder to give `train.init.llm`."""
    return Path(out) / "lm"


def single_images(records: list[dict]) -> set[tuple]:
    """The identities of the images that records of one image ask about."""
    from pipelines.scene_text import image_identity

    return {image_identity(r["images"][0]) for r in records if len(r["images"]) == 1}


def held_out_images(records: list[dict], held_out: int, seed: int) -> set[tuple]:
    """`held_out` images of `records`, drawn by `seed` from their identities in sorted order (so the draw
    depends on neither the record order nor the render's parts)."""
    images = sorted(single_images(records), key=repr)
    random.Random(seed).shuffle(images)
    return set(images[:held_out])


def run_lm(config: dict, out: str | Path, log=print) -> dict:
    """Pretrain the LLM (or skip it when done with the same config and inputs); return the manifest."""
    cfg = lm_settings(config)
    render_dir = Path(cfg["input"] or Path(out) / "render")
    pack_dir = Path(cfg["pack"] or Path(out) / "pack")
    if read_manifest(render_dir) is None:
        raise ConfigError(f"lm.input: {render_dir}: no finished render output (manifest.json); run `loom render` first")
    packed = read_manifest(pack_dir)
    if packed is None:
        raise ConfigError(f"lm.pack: {pack_dir}: no finished pack output (manifest.json); run `loom pack` first (the "
                          "LLM learns the pack stage's tokenizer, so the run's model can load it)")
    inputs = {str(render_dir): manifest_hash(render_dir), str(pack_dir): manifest_hash(pack_dir)}
    stage_dir = lm_output(out)
    if is_complete(stage_dir, cfg, inputs):
        log(f"lm: complete in {stage_dir} (same config and inputs); skipped")
        return read_manifest(stage_dir)
    start_or_resume(stage_dir, {"lm": cfg, "inputs": inputs})
    record = StageRecord("lm", cfg, inputs)

    from pipelines.render import read_render_output
    from pipelines.scene_text import described_records, image_identity, scene_captions

    records = read_render_output(render_dir, split=cfg["split"], datasets=cfg["datasets"]) or []
    captions = scene_captions(records)
    if not captions:
        raise ConfigError(f"lm.datasets: {cfg['datasets']} hold no caption records in split {cfg['split']!r} of "
                          f"{render_dir}; name a captions dataset (e.g. coco_caption) beside the questions")
    images = len(single_images(records))
    if cfg["held_out"] >= images:
        raise ConfigError(f"lm.held_out: {cfg['held_out']} of the {images} images in split {cfg['split']!r} of "
                          f"{render_dir} leaves none to train on; hold out fewer, or render more")
    aside = held_out_images(records, cfg["held_out"], cfg["seed"])
    train = [r for r in records if len(r["images"]) != 1 or image_identity(r["images"][0]) not in aside]
    rows, dropped = described_records(train, cfg["seed"], cfg["plain_captions"], captions)
    for reason, count in dropped.items():
        record.drop(reason, count)
    record.rows_in, record.rows_out = len(train), len(rows)
    if cfg["shapes_world_scenes"]:
        from pipelines.scene_text import shapes_world_text

        rows += described_records(shapes_world_text(cfg["shapes_world_scenes"], cfg["seed"]), cfg["seed"],
                                  cfg["plain_captions"])[0]
    log(f"lm: {len(rows)} text records: {record.rows_out} from {len(train)} records of the render ({len(captions)} "
        f"described images; {len(aside)} held out; dropped {dropped or 'none'}), "
        f"{len(rows) - record.rows_out} from {cfg['shapes_world_scenes']} text-only shapes-world scenes")
    text_dir = _write_text_render(rows, stage_dir / "text", render_dir)
    preset, text_pack = _pack_text(cfg, packed, pack_dir, text_dir, stage_dir, log)

    from pipelines.pack_window import prompt_encoder
    from pipelines.tokenize import load_tokenizer
    from vlm import build_model  # wherever vlm keeps its builders
    from vlm.language_pretraining import LANGUAGE_STAGE, save_language_model
    from vlm.train import TrainConfig, read_log, train_stage

    text_manifest = read_manifest(text_pack)
    encoder = prompt_encoder(preset, load_tokenizer(pack_dir / "tokenizer"))
    model = build_model(preset, encoder.tokenizer.get_vocab_size(), text_manifest["image_token_id"],
                        text_manifest["pad_token_id"], seed=cfg["seed"],
                        attn_implementation="sdpa" if preset.encoder_decoder else "segment_sdpa")
    stage = dataclasses.replace(LANGUAGE_STAGE, lr=cfg["lr"], epochs=cfg["epochs"], max_steps=cfg["max_steps"])
    summary = train_stage(model, stage, text_pack, stage_dir / "training",
                          TrainConfig(batch_size=cfg["batch_size"], seed=cfg["seed"], tensorboard=False), log=log)
    scores = context_scores(model, encoder, [r for r in records if len(r["images"]) == 1
                                             and image_identity(r["images"][0]) in aside], captions)
    if scores:
        log(f"lm: held-out questions on {len(aside)} images answered from their description "
            f"{scores['from_description']:.3f}, blind {scores['blind']:.3f} ({scores['questions']} questions)")
    save_language_model(model.cpu(), stage_dir)
    curve = [[row["step"], row["loss"]] for row in read_log(stage_dir / "training")]
    record.extra.update(preset=preset.name, llm_kind=preset.llm_kind, training=summary, held_out=scores,
                        loss_curve=curve, init=f"train.init.llm: {stage_dir}")
    return record.finish(stage_dir)


def _write_text_render(rows: list[dict], text_dir: Path, render_dir: Path) -> Path:
    """The text records as a render output of one part, which the pack stage reads as it reads any."""
    from pipelines.manifest import StageRecord as Done
    from pipelines.render import write_instructions

    write_instructions(rows, text_dir / "instructions" / "00.parquet")
    done = Done("render", {"text_of": str(render_dir)})
    done.rows_in = done.rows_out = len(rows)
    done.extra["files"] = ["instructions/00.parquet"]
    done.finish(text_dir)
    return text_dir


def _pack_text(cfg: dict, packed: dict, pack_dir: Path, text_dir: Path, stage_dir: Path, log) -> tuple:
    """(preset, pack output folder): the text packed in the pack stage's preset and format, with its tokenizers."""
    from jobs.pack import run_pack
    from vlm.preset import get_preset

    preset = get_preset(packed["preset"])
    pack = {"preset": preset.name, "input": str(text_dir), "seq_len": cfg["seq_len"], "ray": "never",
            "tokenizer": {"path": str(pack_dir / "tokenizer")},
            "outputs": {"text": {"datasets": cfg["datasets"], "split": cfg["split"]}}}
    if (pack_dir / "qformer_tokenizer").is_dir():
        pack["qformer_tokenizer"] = {"path": str(pack_dir / "qformer_tokenizer")}
    run_pack({"pack": pack}, stage_dir, log=lambda *_: None)
    return preset, stage_dir / "pack" / "text"


def context_scores(model, encoder, records: list[dict], captions: dict) -> dict | None:
    """Exact-match accuracy on the held-out images' questions, answered with all their captions in the prompt
    (from_description) and with none (blind), overall and per question type."""
    from pipelines.scene_text import image_identity, without_images
    from vlm.evaluate import accuracy_by_question_type, vqa_accuracy
    from vlm.language_pretraining import answer

    questions = [r for r in records if r["task"] == "vqa" and r.get("answers")
                 and captions.get(image_identity(r["images"][0]))]
    if not questions:
        return None
    scores: dict = {"questions": len(questions)}
    for name, describe in (("from_description", True), ("blind", False)):
        prompts = []
        for r in questions:
            description = " ".join(captions[image_identity(r["images"][0])]) if describe else ""
            prompts.append(encoder.encode_prompt(without_images(r, description)["messages"][:1], task=r["task"]).tolist())
        predictions = [encoder.tokenizer.decode(ids, skip_special_tokens=True).strip()
                       for ids in answer(model, prompts, encoder.stop_id)]
        answers = [r["answers"] for r in questions]
        scores[name] = vqa_accuracy(predictions, answers)["exact_match"]
        scores[f"{name}_by_question_type"] = {t: v["accuracy"] for t, v in accuracy_by_question_type(
            predictions, answers, [r["question_type"] for r in questions]).items()}
    return scores
