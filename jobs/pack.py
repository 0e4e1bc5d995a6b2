"""`loom pack`: instruction records → tokenized, packed sequences for one architecture."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

from jobs.config import ConfigError, section
from jobs.ray_runtime import ray_session
from pipelines.manifest import (StageRecord, input_fingerprint, is_complete, manifest_hash, read_manifest,
                                start_or_resume, write_json_atomic)
from pipelines.pack_selection import (Selection, count_selected, plan_windows, records_per_window, render_files,
                                      selected_counts)
from pipelines.pack_window import (OutputCounts, WindowSettings, finished_window, pack_window, pad_id,
                                   visual_token_counter)
from pipelines.qformer_text import qformer_pad
from pipelines.tokenize import Encoder, load_tokenizer
from pipelines.tokenizer_sample import file_sample, llm_texts, qformer_texts, sample_fraction, sampled_conversations
from pipelines.tokenizer_training import train_bpe
from templates.chat import get_chat_format

def pack_settings(config: dict) -> dict:
    cfg = section(config, "pack")  # types, ranges and the outputs' shape: jobs/schema.py
    from vlm.preset import get_preset

    try:
        get_preset(cfg["preset"])
    except (KeyError, ValueError) as err:
        raise ConfigError(f"pack.preset: {err}") from err
    return cfg


def run_pack(config: dict, out: str | Path, log=print, ray_address: str | None = None) -> dict:
    """Run (or skip, or resume) the pack stage into `out/pack/<output>/`; return its manifest.

    The driver plans windows from the render output's footers and its `dataset` and `split` columns, trains
    the tokenizers on a bounded hash sample, and adds up what each window returns: counts and histograms.
    The windows read, pack and write their records themselves, here or as Ray tasks."""
    cfg = pack_settings(config)
    from vlm.preset import get_preset

    preset = get_preset(cfg["preset"])
    render_dir = Path(cfg["input"] or Path(out) / "render")
    render_manifest = read_manifest(render_dir)
    if render_manifest is None:
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

    qformer_reads = {name: _qformer_reads(name, spec, preset) for name, spec in cfg["outputs"].items()}
    selections = {name: Selection(tuple(spec["datasets"]), spec.get("split", "train"))
                  for name, spec in cfg["outputs"].items()}
    try:
        files = render_files(render_dir, render_manifest)
    except ValueError as err:
        raise ConfigError(f"pack.input: {err}") from err
    # auto: Ray when a cluster is named or the render output holds more records than one window
    on_ray = cfg["ray"] == "always" or (cfg["ray"] == "auto" and bool(
        ray_address or os.environ.get("RAY_ADDRESS") or render_manifest.get("rows_out", 0) > cfg["window"]))
    record = StageRecord("pack", cfg, inputs)
    chat_format = get_chat_format(preset.chat_format)
    with (ray_session(ray_address) if on_ray else contextlib.nullcontext()) as ray:
        # the dataset and split columns only, a file per Ray task on Ray
        if ray is None:
            file_counts = [count_selected(path, selections) for path in files]
        else:
            task = ray.remote(count_selected)
            file_counts = ray.get([task.remote(path, selections) for path in files])
        rows_in = sum(sum(counts["rows"]) for counts in file_counts)
        _refuse_empty_selections(selections, file_counts, render_dir)
        plans = {name: plan_windows(name, selected_counts(file_counts, name),
                                    records_per_window(cfg["window"], spec.get("weights") or {}))
                 for name, spec in cfg["outputs"].items()}
        # a killed run of the same config on the same inputs resumes: its tokenizers and finished windows are kept
        start_or_resume(stage_dir, {"config": cfg, "inputs": inputs})
        record.rows_in = rows_in
        tokenizer_dir, qformer_dir, sampled = _tokenizers(cfg, preset, chat_format, stage_dir, files, rows_in, ray, log)
        encoder = Encoder(load_tokenizer(tokenizer_dir), chat_format, visual_token_counter(preset), cfg["loss_on"])
        qformer_max_length = preset.qformer_instruction_length if qformer_dir else None
        settings = {name: WindowSettings(
            output=name, selection=selections[name], weights=spec.get("weights") or {}, out_dir=str(stage_dir / name),
            tokenizer_dir=str(tokenizer_dir), chat_format=preset.chat_format, visual_tokens=visual_token_counter(preset),
            seq_len=cfg["seq_len"], loss_on=cfg["loss_on"], mode=cfg["mode"],
            max_images_per_sequence=cfg["max_images_per_sequence"], too_long=cfg["too_long"],
            sequences_per_shard=cfg["sequences_per_shard"], qformer_dir=qformer_dir and str(qformer_dir),
            # LAVIS reads at most 128 instruction tokens (and 32 caption tokens in BLIP-2's stage 1)
            qformer_max_length=qformer_max_length, qformer_text=qformer_reads[name],
        ) for name, spec in cfg["outputs"].items()}
        totals = _pack_windows(plans, settings, ray, log)

    outputs = {}
    for name in cfg["outputs"]:
        summary, mixture = _finish_output(totals[name], settings[name], cfg, preset, encoder, tokenizer_dir,
                                          image_folders(render_dir, render_manifest, Path(settings[name].out_dir)))
        outputs[name] = {**summary, "mixture": mixture,
                         "qformer_text": qformer_reads[name] if preset.qformer_text else None}
        record.rows_out += summary["samples"]
        for reason, count in summary["dropped"].items():
            record.drop(reason, count)
        log(f"pack: {name}: {summary['samples']} samples → {summary['sequences']} sequences of ≤{cfg['seq_len']} "
            f"tokens, fill {summary['fill']:.3f} (lower bound {summary['lower_bound_sequences']})")
    record.extra.update(outputs=outputs, preset=preset.name, visual_tokens=preset.visual_tokens,
                        seq_len=cfg["seq_len"], vocab_size=encoder.tokenizer.get_vocab_size(), tokenizer_sample=sampled)
    # splits or datasets no output asked for (e.g. eval)
    record.extra["not_selected"] = rows_in - sum(sum(counts["any"]) for counts in file_counts)
    return record.finish(stage_dir)


def _qformer_reads(name: str, spec: dict, preset) -> str | None:
    """What the Q-Former reads with an output's images: the output's qformer_text, else what the preset's stages
    reading it say, else the preset's own."""
    kinds = {stage.qformer_text for stage in preset.stages if stage.data == name} - {None}
    if len(kinds) > 1 and not spec.get("qformer_text"):
        raise ConfigError(f"pack.outputs.{name}: stages of {preset.name} read it with the Q-Former reading "
                          f"{sorted(kinds)}; give each its own output")
    return spec.get("qformer_text") or next(iter(kinds), preset.qformer_text)


def _refuse_empty_selections(selections: dict[str, Selection], file_counts: list[dict], render_dir: Path) -> None:
    for name, selection in selections.items():
        if not any(sum(counts["selected"][name]) for counts in file_counts):
            pairs = set().union(*(counts["pairs"] for counts in file_counts))
            datasets, splits = sorted({str(d) for d, _ in pairs}), sorted({str(s) for _, s in pairs})
            shown = ", ".join(datasets[:20]) + (f" and {len(datasets) - 20} more" if len(datasets) > 20 else "")
            raise ConfigError(f"pack.outputs.{name}: no record of split {selection.split!r} in a dataset starting with "
                              f"{list(selection.datasets)}; {render_dir} holds datasets {shown or 'none'} in splits "
                              f"{splits}; fix the output's datasets or split")


def _tokenizers(cfg: dict, preset, chat_format, stage_dir: Path, files: list[str], records: int, ray, log
                ) -> tuple[Path, Path | None, dict]:
    """The LLM's tokenizer folder (trained on a hash sample, or copied) and the Q-Former's where the preset has
    one, kept from a killed run of the same config; and how many records each trained one read."""
    tokenizer_dir = stage_dir / "tokenizer"
    qformer_dir = stage_dir / "qformer_tokenizer" if preset.qformer_text else None
    ready = stage_dir / ".tokenizers_ready"  # what a trained one read; written once both folders are complete
    if ready.exists():
        log("pack: tokenizers kept from the interrupted run")
        sampled = json.loads(ready.read_text())
    else:
        sampled = {}
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
        if "train" in cfg["tokenizer"]:
            train = cfg["tokenizer"]["train"]
            conversations = _Counted(_sample(files, records, train["sample"], ray))
            train_bpe(llm_texts(conversations, chat_format), train["vocab_size"], tokenizer_dir,
                      bos=chat_format.bos, eos=chat_format.eos)
            sampled["tokenizer"] = conversations.count
            log(f"pack: tokenizer trained on {conversations.count} of {records} records")
        else:
            shutil.copytree(cfg["tokenizer"]["path"], tokenizer_dir)
        if qformer_dir is not None:
            shutil.rmtree(qformer_dir, ignore_errors=True)
            qformer = cfg["qformer_tokenizer"]
            if "train" in qformer:
                conversations = _Counted(_sample(files, records, qformer["train"]["sample"], ray))
                train_bpe(qformer_texts(conversations), qformer["train"]["vocab_size"], qformer_dir,
                          bos="[CLS]", eos="[SEP]")
                sampled["qformer_tokenizer"] = conversations.count
            else:
                shutil.copytree(qformer["path"], qformer_dir)
        write_json_atomic(ready, sampled)
    if qformer_dir is not None:
        size, room = load_tokenizer(qformer_dir).get_vocab_size(), preset.connector_config["vocab_size"]
        if size > room:
            raise ConfigError(f"pack.qformer_tokenizer: {size} tokens, more than the {room} word embeddings of "
                              f"{preset.name}'s Q-Former; use its own tokenizer or a smaller vocab_size")
    return tokenizer_dir, qformer_dir, sampled


def _sample(files: list[str], records: int, sample: int, ray):
    """The conversations of a hash sample of at most `sample` records, one file's at a time (read by Ray tasks
    when the stage runs on Ray)."""
    fraction = sample_fraction(records, sample)
    if ray is None:
        per_file = (file_sample(path, fraction) for path in files)
    else:
        task = ray.remote(file_sample)
        refs = [task.remote(path, fraction) for path in files]
        per_file = (ray.get(ref) for ref in refs)
    return sampled_conversations(per_file, sample)


class _Counted:
    """An iterable that counts what went through it."""

    def __init__(self, items):
        self.items, self.count = items, 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item


def _pack_windows(plans: dict[str, list], settings: dict[str, WindowSettings], ray, log) -> dict[str, OutputCounts]:
    """Every window packed (here, or as Ray tasks), or kept where a killed run finished it; each output's sums."""
    totals = {name: OutputCounts(settings[name].seq_len, settings[name].selection.datasets) for name in plans}
    todo = []
    for name, windows in plans.items():
        for window in windows:
            done = finished_window(settings[name].out_dir, window.index)
            if done is None:
                todo.append(window)
            else:
                totals[name].add(done)
                log(f"pack: {name}: window {window.index + 1}/{window.count} done (kept from the interrupted run)")
    if ray is None:
        for window in todo:
            totals[window.output].add(pack_window(window, settings[window.output]))
            log(f"pack: {window.output}: window {window.index + 1}/{window.count} done")
        return totals
    task = ray.remote(pack_window)
    log(f"pack: {len(todo)} window(s) on Ray")
    shared = {name: ray.put(value) for name, value in settings.items()}
    pending = {task.remote(window, shared[window.output]): window for window in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        window = pending.pop(ready[0])
        totals[window.output].add(ray.get(ready[0]))
        log(f"pack: {window.output}: window {window.index + 1}/{window.count} done")
    return totals


def image_folders(render_dir: Path, render_manifest: dict, out_dir: Path) -> dict:
    """What a pack output's manifest says of where its image references lead: `run_folder`, the folder
    run-relative references (`ingest/pairs/00000.tar`) start from, relative to the output (so the run folder
    moves whole), and the render's named `image_roots` ({root, path} references; train may re-point them)."""
    from pipelines.render import run_folder

    return {"run_folder": os.path.relpath(run_folder(render_dir), Path(out_dir).resolve()),
            "image_roots": render_manifest.get("image_roots", {})}


def _finish_output(counts: OutputCounts, settings: WindowSettings, cfg: dict, preset, encoder: Encoder,
                   tokenizer_dir: Path, images: dict) -> tuple[dict, dict]:
    """An output's summary and mixture from its windows' sums, and its manifest and tokenizer beside its shards."""
    out_dir = Path(settings.out_dir)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    shutil.copytree(tokenizer_dir, out_dir / "tokenizer", dirs_exist_ok=True)
    summary = counts.summary()
    write_json_atomic(out_dir / "manifest.json", {
        **summary, "seq_len": cfg["seq_len"], "preset": preset.name, "architecture": preset.architecture,
        "tokenizer_hash": hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()[:16],
        "visual_tokens": preset.visual_tokens,
        "mode": cfg["mode"], "window": cfg["window"], "max_images_per_sequence": cfg["max_images_per_sequence"],
        "image_token": "<image>", "image_token_id": encoder.image_token_id,
        "pad_token_id": pad_id(encoder), "eos_token_id": encoder.eos_id,
        "bos_token_id": encoder.bos_id, "loss_on": cfg["loss_on"], "chat_format": preset.chat_format,
        **({"qformer_pad_token_id": qformer_pad(load_tokenizer(settings.qformer_dir))} if settings.qformer_dir else {}),
        **images,
    })
    return summary, counts.mixture
