"""`loom pack`: instruction records → tokenized, packed sequences for one architecture."""
from __future__ import annotations

import collections
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from jobs.config import ConfigError, require, section
from pipelines.manifest import StageRecord, input_fingerprint, is_complete, manifest_hash, read_manifest, write_json_atomic
from pipelines.pack import build_sequences, fill_stats, pack_figures, plan_sequences, split_text_sample
from pipelines.render import read_render_output, selected
from pipelines.tokenize import IGNORE, Encoder, load_tokenizer
from pipelines.tokenizer_training import train_bpe
from templates.chat import get_chat_format

DEFAULTS = {
    "input": None,  # the render output folder; default: {out}/render
    "preset": "llava-1.5",
    "seq_len": 2048,
    "tokenizer": {"train": {"vocab_size": 2000}},  # or {path: a local Hugging Face tokenizer folder}
    "loss_on": "assistant",
    "sequences_per_shard": 1000,
    # block: samples isolated (attention and positions restart per sample); interleave_same_task: samples of
    # one task share a sequence as one document and attend across (Qwen-VL's interleaved stage 2)
    "mode": "block",
    "max_images_per_sequence": None,  # a cap for the vision tower's memory
    "window": 1_000_000,  # samples packed together at most: memory stays flat on any corpus size
    "too_long": "drop",  # or split: text-only samples cut into sequences; a sample with images is never cut
    # auto: windows are packed by Ray tasks when a cluster is named or there is more than one window
    "ray": "auto",
    # InstructBLIP's Q-Former reads each image's instruction in its own vocabulary: a BERT tokenizer folder
    # ({path: DIR}, e.g. the qformer_tokenizer folder of Salesforce/instructblip-*), or one trained here
    "qformer_tokenizer": {"train": {"vocab_size": 400}},
    # name -> {datasets: [prefixes of the records' `dataset`], split: train}, and optionally
    #   weights: {prefix: w}, the stage's mixture: each record of those datasets is drawn w times on average
    #     (2 doubles a dataset, 0.25 keeps a quarter of it; seeded), the others once
    #   qformer_text: caption or instruction, what a Q-Former reads with this output's images, where a config
    #     points a stage at another output than its preset's (by default, what the preset's stages reading it say)
    "outputs": {},
}
QFORMER_TEXTS = ("caption", "instruction")


MODES = ("block", "interleave_same_task")


def pack_settings(config: dict) -> dict:
    cfg = section(config, "pack", DEFAULTS)
    from vlm.preset import get_preset

    try:
        get_preset(cfg["preset"])
    except (KeyError, ValueError) as err:
        raise ConfigError(f"pack.preset: {err}") from err
    tok = cfg["tokenizer"]
    require(isinstance(tok, dict) and (("path" in tok) != ("train" in tok)),
            f"pack.tokenizer: {tok!r}; expected either {{path: DIR}} or {{train: {{vocab_size: N}}}}")
    require(cfg["loss_on"] in ("assistant", "all"), f"pack.loss_on: {cfg['loss_on']!r}; expected assistant or all")
    require(cfg["seq_len"] >= 64, f"pack.seq_len: {cfg['seq_len']}; expected at least 64")
    require(cfg["mode"] in MODES, f"pack.mode: {cfg['mode']!r}; expected one of {', '.join(MODES)}")
    cap = cfg["max_images_per_sequence"]
    require(cap is None or (isinstance(cap, int) and cap >= 1),
            f"pack.max_images_per_sequence: {cap!r}; expected a whole number >= 1, or null for no cap")
    require(isinstance(cfg["window"], int) and cfg["window"] >= 1,
            f"pack.window: {cfg['window']!r}; expected the number of samples packed together, e.g. 1000000")
    qformer = cfg["qformer_tokenizer"]
    require(isinstance(qformer, dict) and (("path" in qformer) != ("train" in qformer)),
            f"pack.qformer_tokenizer: {qformer!r}; expected either {{path: DIR}} or {{train: {{vocab_size: N}}}}")
    require(cfg["ray"] in ("auto", "always", "never"), f"pack.ray: {cfg['ray']!r}; expected auto, always or never")
    require(cfg["too_long"] in ("drop", "split"),
            f"pack.too_long: {cfg['too_long']!r}; expected drop, or split (text-only samples only)")
    require(bool(cfg["outputs"]), "pack.outputs: empty; name at least one packed output, e.g. "
            "{instruct: {datasets: [vqav2], split: train}}")
    for name, spec in cfg["outputs"].items():
        require(isinstance(spec, dict) and isinstance(spec.get("datasets"), list) and spec["datasets"],
                f"pack.outputs.{name}: {spec!r}; expected {{datasets: [dataset name prefixes], split: train}}")
        unknown = set(spec) - {"datasets", "split", "weights", "qformer_text"}
        require(not unknown, f"pack.outputs.{name}: unknown key(s) {sorted(unknown)}; expected datasets, split, "
                             "weights, qformer_text")
        weights = spec.get("weights") or {}
        require(isinstance(weights, dict) and all(isinstance(w, (int, float)) and w >= 0 for w in weights.values()),
                f"pack.outputs.{name}.weights: {weights!r}; expected {{dataset prefix: a number >= 0}}")
        strays = [k for k in weights if k not in spec["datasets"]]
        require(not strays, f"pack.outputs.{name}.weights: {strays} are not among its datasets {spec['datasets']}; "
                            "weigh the prefixes the output lists")
        require(spec.get("qformer_text") in (None, *QFORMER_TEXTS),
                f"pack.outputs.{name}.qformer_text: {spec.get('qformer_text')!r}; expected one of {QFORMER_TEXTS}")
    return cfg


def run_pack(config: dict, out: str | Path, log=print, ray_address: str | None = None) -> dict:
    """Run (or skip) the pack stage into `out/pack/<output>/`; return its manifest."""
    cfg = pack_settings(config)
    from vlm.preset import get_preset

    preset = get_preset(cfg["preset"])
    render_dir = Path(cfg["input"] or Path(out) / "render")
    if read_manifest(render_dir) is None:
        raise ConfigError(f"pack.input: {render_dir}: no finished render output (manifest.json); run `loom render` first")
    inputs = {str(render_dir): manifest_hash(render_dir)}
    if "path" in cfg["tokenizer"]:
        tokenizer_file = Path(cfg["tokenizer"]["path"]) / "tokenizer.json"
        fingerprint = input_fingerprint(tokenizer_file)
        if fingerprint is None:
            raise ConfigError(f"pack.tokenizer.path: {cfg['tokenizer']['path']}: no tokenizer.json; give a folder "
                              "saved by a Hugging Face fast tokenizer, or use {train: {vocab_size: N}}")
        inputs[str(tokenizer_file)] = fingerprint
    if preset.qformer_text and "path" in cfg["qformer_tokenizer"]:
        qformer_file = Path(cfg["qformer_tokenizer"]["path"]) / "tokenizer.json"
        fingerprint = input_fingerprint(qformer_file)
        if fingerprint is None:
            raise ConfigError(f"pack.qformer_tokenizer.path: {cfg['qformer_tokenizer']['path']}: no tokenizer.json")
        inputs[str(qformer_file)] = fingerprint
    stage_dir = Path(out) / "pack"
    if is_complete(stage_dir, cfg, inputs):
        log(f"pack: complete in {stage_dir} (same config and inputs); skipped")
        return read_manifest(stage_dir)
    shutil.rmtree(stage_dir, ignore_errors=True)  # packing is fast: a partial pack is redone whole

    records = read_render_output(render_dir)
    chat_format = get_chat_format(preset.chat_format)
    tokenizer_dir = stage_dir / "tokenizer"
    if "train" in cfg["tokenizer"]:
        texts = (m["content"] for r in records for m in r["messages"])
        tokenizer = train_bpe(_with_format_strings(texts, chat_format), cfg["tokenizer"]["train"]["vocab_size"],
                              tokenizer_dir, bos=chat_format.bos, eos=chat_format.eos)
    else:
        shutil.copytree(cfg["tokenizer"]["path"], tokenizer_dir)
        tokenizer = load_tokenizer(tokenizer_dir)
    encoder = Encoder(tokenizer, chat_format, visual_token_counter(preset), cfg["loss_on"])
    if preset.qformer_text:
        qformer = cfg["qformer_tokenizer"]
        qformer_dir = stage_dir / "qformer_tokenizer"
        if "train" in qformer:
            texts = (_qformer_text(r["messages"], kind) for r in records for kind in ("instruction", "caption"))
            train_bpe(texts, qformer["train"]["vocab_size"], qformer_dir, bos="[CLS]", eos="[SEP]")
        else:
            shutil.copytree(qformer["path"], qformer_dir)
        size, room = load_tokenizer(qformer_dir).get_vocab_size(), preset.connector_config["vocab_size"]
        if size > room:
            raise ConfigError(f"pack.qformer_tokenizer: {size} tokens, more than the {room} word embeddings of "
                              f"{preset.name}'s Q-Former; use its own tokenizer or a smaller vocab_size")
        qformer_settings = {"qformer_dir": str(qformer_dir),
                            # LAVIS reads at most 128 instruction tokens (and 32 caption tokens in BLIP-2's stage 1)
                            "qformer_max_length": min(128, preset.connector_config.get("max_position_embeddings", 512))}
    else:
        qformer_settings = {}

    record = StageRecord("pack", cfg, inputs)
    record.rows_in = len(records)
    outputs, picked = {}, set()
    for name, spec in cfg["outputs"].items():
        chosen = [r for r in records if selected(r, spec["datasets"], spec.get("split", "train"))]
        picked.update(id(r) for r in chosen)
        chosen, mixture = weigh(chosen, spec["datasets"], spec.get("weights") or {}, seed=name)
        kinds = {stage.qformer_text for stage in preset.stages if stage.data == name} - {None}
        if len(kinds) > 1 and not spec.get("qformer_text"):
            raise ConfigError(f"pack.outputs.{name}: stages of {preset.name} read it with the Q-Former reading "
                              f"{sorted(kinds)}; give each its own output")
        qformer_text = spec.get("qformer_text") or next(iter(kinds), preset.qformer_text)
        on_ray = cfg["ray"] == "always" or (cfg["ray"] == "auto" and bool(
            ray_address or os.environ.get("RAY_ADDRESS") or len(chosen) > cfg["window"]))
        summary = _pack_output(chosen, encoder, {**cfg, **qformer_settings, "qformer_text": qformer_text}, preset,
                               stage_dir / name, tokenizer_dir, record,
                               ray_address=ray_address if on_ray else False, log=log)
        outputs[name] = {**summary, "mixture": mixture, "qformer_text": qformer_text if preset.qformer_text else None}
        record.rows_out += summary["samples"]
        log(f"pack: {name}: {summary['samples']} samples → {summary['sequences']} sequences of ≤{cfg['seq_len']} "
            f"tokens, fill {summary['fill']:.3f} (lower bound {summary['lower_bound_sequences']})")
    record.extra.update(outputs=outputs, preset=preset.name, visual_tokens=preset.visual_tokens,
                        seq_len=cfg["seq_len"], vocab_size=tokenizer.get_vocab_size())
    record.extra["not_selected"] = record.rows_in - len(picked)  # splits or datasets no output asked for (e.g. eval)
    return record.finish(stage_dir)


def weigh(records: list[dict], datasets: list[str], weights: dict[str, float], seed: str) -> tuple[list[dict], dict]:
    """An output's mixture: each record of a weighed dataset prefix drawn `w` times on average (the whole part
    of w every time, the fraction by a seeded coin), the rest once. Returns the draw and, per prefix, how many
    records it had and how many samples it gave."""
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    drawn, mixture = [], {prefix: {"records": 0, "samples": 0} for prefix in datasets}
    for record in records:
        prefix = next(p for p in datasets if record["dataset"].startswith(p))
        weight = weights.get(prefix, 1)
        copies = int(weight) + int(rng.random() < weight - int(weight))
        drawn += [record] * copies
        mixture[prefix]["records"] += 1
        mixture[prefix]["samples"] += copies
    return drawn, mixture


def visual_token_counter(preset):
    """The LLM positions per image: the preset's fixed count, or (Qwen2-VL) a function of the image's size."""
    return preset.visual_tokens if preset.vision_kind != "qwen2_vl" else preset.visual_tokens_for


def _pad_id(encoder: Encoder) -> int:
    """The padding id batches use: `<pad>` where the tokenizer has one, else end-of-sequence (as LLaMA does)."""
    pad = encoder.tokenizer.token_to_id("<pad>")
    return encoder.eos_id if pad is None else pad


def _with_format_strings(texts, chat_format):
    yield from chat_format.strings()
    yield from texts


def _pack_output(records, encoder, cfg, preset, out_dir: Path, tokenizer_dir: Path, record: StageRecord,
                 ray_address=False, log=print) -> dict:
    """Pack one output in windows of `window` records, each tokenized, packed and written on its own: here,
    or as Ray tasks when ray_address is not False (an address, or None for a local Ray)."""
    seq_len, window = cfg["seq_len"], cfg["window"]
    shards = out_dir / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    settings = {key: cfg.get(key) for key in ("seq_len", "loss_on", "mode", "max_images_per_sequence", "too_long",
                                              "sequences_per_shard", "qformer_dir", "qformer_max_length",
                                              "qformer_text")}
    jobs = [(records[start:start + window], k, settings, preset.name, str(tokenizer_dir), str(shards))
            for k, start in enumerate(range(0, len(records), window))] or [([], 0, settings, preset.name,
                                                                           str(tokenizer_dir), str(shards))]
    if ray_address is False:
        parts = [pack_window(*job) for job in jobs]
    else:
        from jobs.ray_runtime import ray_session

        with ray_session(ray_address) as ray:
            task = ray.remote(pack_window)
            log(f"pack: {out_dir.name}: {len(jobs)} window(s) on Ray")
            parts = ray.get([task.remote(*job) for job in jobs])
    dropped = collections.Counter()
    for part in parts:
        dropped.update(part["dropped"])
    for reason, count in dropped.items():
        record.drop(reason, count)
    lengths = np.concatenate([part["lengths"] for part in parts])
    sequence_tokens = np.concatenate([part["sequence_tokens"] for part in parts])
    tasks = [task for part in parts for task in part["tasks"]]
    shutil.copytree(tokenizer_dir, out_dir / "tokenizer")
    summary = {**fill_stats(lengths, len(sequence_tokens), seq_len), "dropped": dict(dropped),
               "figures": pack_figures(lengths, sequence_tokens, tasks, seq_len),
               "images": sum(part["images"] for part in parts),
               "samples_per_sequence": len(lengths) / max(len(sequence_tokens), 1), "windows": len(jobs)}
    write_json_atomic(out_dir / "manifest.json", {
        **summary, "seq_len": seq_len, "preset": preset.name, "architecture": preset.architecture,
        "tokenizer_hash": hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()[:16],
        "visual_tokens": preset.visual_tokens,
        "mode": cfg["mode"], "window": window, "max_images_per_sequence": cfg["max_images_per_sequence"],
        "image_token": "<image>", "image_token_id": encoder.image_token_id,
        "pad_token_id": _pad_id(encoder), "eos_token_id": encoder.eos_id,
        "bos_token_id": encoder.bos_id, "loss_on": cfg["loss_on"], "chat_format": preset.chat_format,
        **({"qformer_pad_token_id": _qformer_pad(load_tokenizer(cfg["qformer_dir"]))} if cfg.get("qformer_dir") else {}),
    })
    return summary


def pack_window(records: list[dict], window: int, settings: dict, preset_name: str, tokenizer_dir: str,
                shards_dir: str) -> dict:
    """Ray task (or a plain call): tokenize one window of records, pack it and write its shards
    (packed-<window>-<n>.parquet, atomically); what it holds, for the output's figures."""
    from vlm.preset import get_preset

    preset = get_preset(preset_name)
    encoder = Encoder(load_tokenizer(tokenizer_dir), get_chat_format(preset.chat_format), visual_token_counter(preset),
                      settings["loss_on"])
    seq_len, cap = settings["seq_len"], settings["max_images_per_sequence"]
    samples, dropped = _encode(records, encoder, seq_len, settings["too_long"])
    if settings["qformer_dir"]:
        qformer = QFormerInstructions(settings["qformer_dir"], settings["qformer_max_length"])
        by_id = {r["id"]: r for r in records}
        for sample in samples:
            text = _qformer_text(by_id[sample["id"].split("#part")[0]]["messages"], settings["qformer_text"])
            sample["qformer_ids"] = [qformer(text)] * len(sample["images"])
    if cap is not None:
        over = sum(1 for s in samples if len(s["images"]) > cap)
        if over:
            dropped["more_images_than_the_cap"] += over
            samples = [s for s in samples if len(s["images"]) <= cap]
    lengths = np.array([len(s["input_ids"]) + len(s["decoder_labels"]) for s in samples], dtype=np.int64)
    interleave = settings["mode"] == "interleave_same_task"
    tasks = np.unique([s["task"] for s in samples], return_inverse=True)[1] if interleave and samples else None
    images = np.array([len(s["images"]) for s in samples], dtype=np.int64) if cap is not None else None
    bins = plan_sequences(lengths, seq_len, groups=tasks, images=images, max_images=cap)
    table = build_sequences(samples, bins, one_document=interleave)
    per_shard = settings["sequences_per_shard"]
    for n, start in enumerate(range(0, table.num_rows, per_shard)):
        final = Path(shards_dir) / f"packed-{window:05d}-{n:05d}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table.slice(start, per_shard), tmp)
        tmp.replace(final)
    return {"lengths": lengths, "sequence_tokens": np.bincount(bins, weights=lengths).astype(np.int64) if bins.size
            else np.zeros(0, np.int64), "tasks": [s["task"] for s in samples], "dropped": dropped,
            "images": int(sum(len(s["images"]) for s in samples))}


def _qformer_pad(tokenizer) -> int:
    """The Q-Former tokenizer's padding id: BERT's [PAD], or the <pad> of one trained here."""
    pad = tokenizer.token_to_id("[PAD]")
    return pad if pad is not None else tokenizer.token_to_id("<pad>")


def _qformer_text(messages: list[dict], kind: str) -> str:
    """What the Q-Former reads of a conversation: the instruction (InstructBLIP: the first user turn's text,
    image marks left out) or the caption (BLIP-2's stage 1: the first answer)."""
    role = "user" if kind == "instruction" else "assistant"
    first = next((m["content"] for m in messages if m["role"] == role), "")
    return " ".join(first.replace("<image>", " ").split())


class QFormerInstructions:
    """Instruction text -> [CLS] ids [SEP] in the Q-Former's vocabulary, at most max_length ids."""

    def __init__(self, tokenizer_dir: str, max_length: int):
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.cls, self.sep = (self.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]"))
        self.pad = _qformer_pad(self.tokenizer)
        if self.cls is None or self.sep is None:
            raise ValueError(f"{tokenizer_dir}: the Q-Former tokenizer has no [CLS] / [SEP] token; give a BERT "
                             "tokenizer folder (e.g. the qformer_tokenizer folder of an InstructBLIP checkpoint)")
        self.max_length = max_length

    def __call__(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids[: self.max_length - 2]
        return [self.cls, *ids, self.sep]


def _encode(records, encoder: Encoder, seq_len: int, too_long: str) -> tuple[list[dict], collections.Counter]:
    """Samples of the records that fit (or split) in seq_len, and how many were dropped for which reason."""
    samples, dropped = [], collections.Counter()
    pair = encoder.chat_format.encoder_decoder
    for r in records:
        if pair:  # FlanT5: the prompt is the encoder input, the answer the decoder target
            input_ids, decoder_labels, images = encoder.encode_pair(r["messages"], r["task"], r["images"])
            labels = np.full(len(input_ids), IGNORE, np.int32)
        else:
            input_ids, labels, images = encoder.encode(r["messages"], r["task"], r["images"])
            decoder_labels = np.empty(0, np.int32)
        sample = {"input_ids": input_ids, "labels": labels, "decoder_labels": decoder_labels, "images": r["images"],
                  "task": r["task"], "id": r["id"]}
        if images != len(r["images"]):
            dropped["image_count_mismatch"] += 1
        elif len(input_ids) + len(decoder_labels) <= seq_len:  # an encoder-decoder row holds both within seq_len
            samples.append(sample)
        elif images:
            dropped["too_long_with_images"] += 1  # never cut: a cut inside an image would corrupt it
        elif too_long == "split" and not pair:  # an encoder-decoder answer cannot follow a cut prompt
            samples.extend(split_text_sample(sample, seq_len))
        else:
            dropped["too_long"] += 1
    return samples, dropped
