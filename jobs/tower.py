"""`loom tower`: pairs shards → a preset's vision tower pretrained with CLIP's contrastive loss.

Reads the ingest output's pairs (image + caption), keeps `held_out` of them aside, trains a byte-level BPE
on the other captions, pretrains the tower of `tower.preset` (default: `pack.preset`) beside a small CLIP
text encoder (vlm/contrastive.py), scores image-caption retrieval on the held-out pairs, and writes
OUT/tower/: a transformers checkpoint folder that `train.init.vision` reads, as it reads OpenAI CLIP.
"""
from __future__ import annotations

import random
from pathlib import Path

from jobs.config import ConfigError, section
from pipelines.manifest import StageRecord, is_complete, manifest_hash, read_manifest, start_or_resume

# the caption tokenizer's end of text, where the text encoder pools (CLIP's own name for it)
END_OF_TEXT = "<|endoftext|>"


def tower_settings(config: dict) -> dict:
    """The tower section over its defaults (jobs/schema.py), its preset resolved: tower.preset, else pack.preset."""
    cfg = section(config, "tower")
    from vlm.contrastive import CONTRASTIVE_KINDS
    from vlm.preset import get_preset

    name = cfg["preset"] or (config.get("pack") or {}).get("preset")
    if name is None:
        raise ConfigError("tower.preset: missing; name the preset whose tower to pretrain (e.g. llava-1.5-tiny), "
                          "or give pack.preset")
    try:
        preset = get_preset(name)
    except KeyError as err:
        raise ConfigError(f"tower.preset: {err.args[0]}") from err
    if preset.vision_kind not in CONTRASTIVE_KINDS:
        raise ConfigError(f"tower.preset: {name}'s {preset.vision_kind} tower is not pretrained contrastively (it "
                          f"trains in the preset's own first stage); towers of kind {' or '.join(CONTRASTIVE_KINDS)} are")
    cfg["preset"] = preset.name
    return cfg


def tower_output(out: str | Path) -> Path:
    """Where `loom tower` writes: the folder to give `train.init.vision`."""
    return Path(out) / "tower"


def held_out_split(records: list[dict], held_out: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training pairs, held-out pairs): `held_out` pairs drawn by `seed` from the pairs in key order, so the
    split depends on neither the shard layout nor the order ingest wrote them in."""
    ordered = sorted(records, key=lambda r: r["image"]["key"])
    random.Random(seed).shuffle(ordered)
    return ordered[held_out:], ordered[:held_out]


def run_tower(config: dict, out: str | Path, log=print) -> dict:
    """Pretrain the tower (or skip it when done with the same config and pairs); return the manifest."""
    cfg = tower_settings(config)
    from catalog.adapters.pairs import read_pairs

    ingest_dir = Path(cfg["input"] or Path(out) / "ingest")
    if read_manifest(ingest_dir) is None:
        raise ConfigError(f"tower.input: {ingest_dir}: no finished ingest output (manifest.json); run `loom ingest` "
                          "first")
    inputs = {str(ingest_dir): manifest_hash(ingest_dir)}
    stage_dir = tower_output(out)
    if is_complete(stage_dir, cfg, inputs):
        log(f"tower: complete in {stage_dir} (same config and pairs); skipped")
        return read_manifest(stage_dir)
    records = read_pairs(str(ingest_dir))
    if len(records) < cfg["held_out"] + 2:
        raise ConfigError(f"tower.held_out: {cfg['held_out']} of the {len(records)} pairs in {ingest_dir} leaves "
                          f"fewer than 2 to train on; hold out fewer, or ingest more pairs")
    start_or_resume(stage_dir, {"tower": cfg, "inputs": inputs})
    record = StageRecord("tower", cfg, inputs)

    from pipelines.tokenizer_training import train_bpe
    from vlm.contrastive import PretrainConfig, contrastive_model, pretrain, retrieval, save_tower
    from vlm.preset import get_preset
    from vlm.train import read_log

    preset = get_preset(cfg["preset"])
    train, held_out = held_out_split(records, cfg["held_out"], cfg["seed"])
    # the caption tokenizer, beside the weights as in a CLIP checkpoint folder
    tokenizer = train_bpe([r["caption"] for r in train], cfg["vocab_size"], stage_dir, bos="<s>", eos=END_OF_TEXT)
    eos, pad = tokenizer.token_to_id(END_OF_TEXT), tokenizer.token_to_id("<pad>")

    def captions(rows: list[dict]) -> list[list[int]]:
        return [tokenizer.encode(r["caption"]).ids + [eos] for r in rows]

    model = contrastive_model(preset, tokenizer.get_vocab_size(), eos, pad, text_layers=cfg["text_layers"],
                              seed=cfg["seed"])
    settings = PretrainConfig(epochs=cfg["epochs"], max_steps=cfg["max_steps"], batch_size=cfg["batch_size"],
                              lr=cfg["lr"], warmup_ratio=cfg["warmup_ratio"], weight_decay=cfg["weight_decay"],
                              seed=cfg["seed"], image_size=cfg["image_size"])
    summary = pretrain(model, preset, [r["image"] for r in train], captions(train), stage_dir, settings, log)
    scores = None
    if held_out:
        scores = retrieval(model, preset, [r["image"] for r in held_out], captions(held_out), cfg["image_size"])
        log(f"tower: held-out retrieval among {scores['pairs']} pairs (chance {scores['chance']:.3f}): image → caption "
            f"{scores['image_to_text']:.3f}, caption → image {scores['text_to_image']:.3f}")
    save_tower(model.cpu(), preset, stage_dir)
    record.rows_in, record.rows_out = len(records), len(train)
    curve = [[row["step"], row["loss"]] for row in read_log(stage_dir)]
    record.extra.update(preset=preset.name, vision_kind=preset.vision_kind, held_out_pairs=len(held_out),
                        pretrain=summary, retrieval=scores, loss_curve=curve,
                        init=f"train.init.vision: {stage_dir}")
    return record.finish(stage_dir)

