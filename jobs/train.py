"""`loom train`: packed sequences → a model trained through its preset's stages, then evaluated."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from jobs.config import ConfigError, require, section
from jobs.evaluate import evaluate_captions, evaluate_vqa
from pipelines.manifest import StageRecord, is_complete, manifest_hash, read_manifest, start_or_resume
from pipelines.pack_window import packed_shards, prompt_encoder
from pipelines.tokenize import Encoder, load_tokenizer

# The train section's keys, types and defaults: jobs/schema.py's Train.
LORA_KEYS = ("rank", "alpha", "dropout", "targets", "group")


def train_settings(config: dict, preset, written=()) -> dict:
    """The train section checked against `preset`; `written`: folders an earlier stage of this run writes (the
    tower `loom tower` pretrains), which train.init may name before they exist."""
    cfg = section(config, "train")  # types and ranges, a stage's keys included: jobs/schema.py
    names = [s.name for s in preset.stages]
    for name in cfg["stages"]:
        require(name in names, f"train.stages.{name}: preset {preset.name} has no such stage; its stages are {names}")
    stages = stages_of(preset, cfg)  # the overridden stages must be valid ones
    if any(stage.lora for stage in stages):
        check_lora_targets(preset, stages)
    for key, folder in cfg["init"].items():
        pretrained_first = Path(str(folder)) in map(Path, written)
        require(pretrained_first or Path(str(folder)).is_dir(),
                f"train.init.{key}: {folder}: no such folder; give a local checkpoint "
                f"folder (download a hub checkpoint first, e.g. `huggingface-cli download NAME --local-dir DIR`)")
    from vlm.packed_masks import ATTENTION_MODES
    from vlm.train import STRATEGIES

    require(cfg["strategy"] in STRATEGIES, f"train.strategy: {cfg['strategy']!r}; expected {' or '.join(STRATEGIES)}")
    require(cfg["attention"] == "auto" or cfg["attention"] in ATTENTION_MODES,
            f"train.attention: {cfg['attention']!r}; expected auto or one of {list(ATTENTION_MODES)}")
    if cfg["attention"] == "auto":
        cfg["attention"] = default_attention(preset)
    return cfg


def default_attention(preset) -> str:
    """train.attention auto: segment_sdpa, or sdpa for an encoder-decoder LLM (FlanT5)."""
    return "sdpa" if preset.encoder_decoder else "segment_sdpa"


def starting_model(preset, cfg: dict, pack_output: Path, log=print) -> tuple:
    """(model, encoder): the model a run's first stage starts from, built for a pack output's tokenizer and
    image token at the run's attention and seed, with train.init's pretrained parts loaded; and the encoder
    of its prompts."""
    from vlm.builders import build_model
    from vlm.model import count_parameters

    packed = json.loads((pack_output / "manifest.json").read_text())
    tokenizer = load_tokenizer(pack_output / "tokenizer")
    model = build_model(preset, tokenizer.get_vocab_size(), packed["image_token_id"], packed["pad_token_id"],
                        attn_implementation=cfg["attention"], seed=cfg["seed"])
    log(f"train: {preset.name}, parameters {count_parameters(model)}")
    if cfg["init"]:
        from vlm.checkpoint import init_from_pretrained

        init = cfg["init"]
        try:
            init_from_pretrained(model, init.get("model"), init.get("llm"), init.get("vision"), log=log)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"train.init: {err}") from err
    return model, prompt_encoder(preset, tokenizer)


def trained_model(run: Path) -> tuple:
    """(model, encoder) of a finished run's last stage, in evaluation mode: what its held-out evaluation used."""
    from vlm.train import load_model

    last = json.loads((Path(run) / "train" / "manifest.json").read_text())["stages"][-1]
    model = load_model(Path(run) / "train" / last["name"]).eval()
    tokenizer = load_tokenizer(Path(run) / "pack" / model.preset.stages[0].data / "tokenizer")
    return model, prompt_encoder(model.preset, tokenizer)


def stages_of(preset, cfg: dict) -> list:
    """The preset's stages with every train.stages.NAME override applied (schedule, data, trainable, objective,
    image_size, lora), once: what a stage learns and for how long is its Stage's, the trainer's TrainConfig
    holds only how this machine runs it."""
    import dataclasses

    stages = []
    for stage in preset.stages:
        overrides = dict(cfg["stages"].get(stage.name) or {})
        for key in ("trainable", "betas"):  # YAML lists; the Stage holds tuples
            if key in overrides:
                overrides[key] = tuple(overrides[key])
        if "lora" in overrides:
            overrides["lora"] = lora_of(preset, stage, overrides["lora"], overrides.get("trainable", stage.trainable))
        if overrides.get("image_size") and not preset.visual_token_count_fixed:
            raise ConfigError(f"train.stages.{stage.name}.image_size: {preset.name}'s {preset.connector} connector "
                              "gives one visual token per patch group, so another resolution changes the visual "
                              "tokens the pack laid out; only presets with a fixed count (Q-Former, resampler) "
                              "train a stage at another resolution")
        try:
            stages.append(dataclasses.replace(stage, **overrides))
        except ValueError as err:
            raise ConfigError(f"train.stages.{stage.name}: {err}") from err
    return stages


def lora_of(preset, stage, given, trainable: tuple):
    """A stage's `lora` setting: true, the stage's own LoRA or else the preset's default (MiniGPT-v2's, on the
    LLM); false or null, none (its groups train whole); a mapping, some of rank, alpha, dropout, targets and
    group over that default. Its group must be one of the stage's `trainable` groups."""
    import dataclasses

    from vlm.preset import LoRA

    key = f"train.stages.{stage.name}.lora"
    if given is None or given is False:
        return None
    given = {} if given is True else given
    require(isinstance(given, dict), f"{key}: {given!r}; expected true, false or a mapping of {', '.join(LORA_KEYS)}")
    unknown = set(given) - set(LORA_KEYS)
    require(not unknown, f"{key}: unknown key(s) {sorted(unknown)}; expected some of {list(LORA_KEYS)}")
    if isinstance(given.get("targets"), list):
        given = {**given, "targets": tuple(given["targets"])}
    try:
        lora = LoRA(**{**dataclasses.asdict(stage.lora or preset.default_lora), **given})
    except ValueError as err:  # "lora.KEY: what is wrong; what is expected"
        raise ConfigError(f"train.stages.{stage.name}.{err}") from err
    require(lora.group in trainable, f"{key}.group: {lora.group!r} is frozen in this stage (it trains {list(trainable)}); "
            f"add it to train.stages.{stage.name}.trainable or put the adapters on one of those")
    return lora


def check_lora_targets(preset, stages: list) -> None:
    """Every LoRA stage's group and targets checked against the preset's layers (a model built on the meta
    device: no memory, no weights) before any stage trains."""
    import torch

    from vlm.builders import build_model
    from vlm.lora import check_targets

    with torch.device("meta"):
        model = build_model(preset, None, 0, 0)
    for stage in (s for s in stages if s.lora is not None):
        try:
            check_targets(model, stage.lora)
        except ValueError as err:
            raise ConfigError(f"train.stages.{stage.name}.{err}") from err


def run_train(config: dict, out: str | Path, log=print, ray_address: str | None = None) -> dict:
    """Train every stage of the packed preset (each resumable), evaluate, write `out/train/manifest.json`."""
    from vlm.preset import get_preset

    pack_dir = Path((config.get("train") or {}).get("input") or Path(out) / "pack")
    pack_manifest = read_manifest(pack_dir)
    if pack_manifest is None:
        raise ConfigError(f"train.input: {pack_dir}: no finished pack output (manifest.json); run `loom pack` first")
    preset = get_preset(pack_manifest["preset"])
    cfg = train_settings(config, preset)
    stages = stages_of(preset, cfg)
    for stage in stages:
        if stage.data not in pack_manifest["outputs"]:
            raise ConfigError(f"stage {stage.name} of {preset.name} trains on pack output {stage.data!r}, which "
                              f"pack did not write (it wrote {sorted(pack_manifest['outputs'])}); add it to pack.outputs")
        packed_with = pack_manifest["outputs"][stage.data].get("qformer_text")
        if stage.qformer_text and packed_with and packed_with != stage.qformer_text:
            raise ConfigError(f"stage {stage.name} of {preset.name}: its Q-Former reads the {stage.qformer_text}, but "
                              f"pack output {stage.data!r} was packed with the {packed_with}; point the stage at "
                              f"another output, or set pack.outputs.{stage.data}.qformer_text: {stage.qformer_text}")
    inputs = {str(pack_dir): manifest_hash(pack_dir)}
    for folder in cfg["init"].values():  # a Loom stage's output (a tower pretrained again) re-runs train
        if read_manifest(folder) is not None:
            inputs[str(folder)] = manifest_hash(folder)
    stage_dir = Path(out) / "train"
    if is_complete(stage_dir, cfg, inputs):
        log(f"train: complete in {stage_dir} (same config and inputs); skipped")
        return read_manifest(stage_dir)

    for data in dict.fromkeys(stage.data for stage in stages):  # every packed shard, before any training
        try:
            packed_shards(pack_dir / data)
        except ValueError as err:
            raise ConfigError(f"train.input: {err}") from err
    start_or_resume(stage_dir, {"train": cfg, "inputs": inputs})
    import torch

    from vlm.train import load_model

    record = StageRecord("train", cfg, inputs)
    model, encoder = starting_model(preset, cfg, pack_dir / stages[0].data, log)
    summaries, previous = [], None
    session = contextlib.nullcontext()
    if cfg["workers"] > 1:
        from jobs.ray_runtime import ray_session

        session = ray_session(ray_address)
        log(f"train: {cfg['workers']} Ray Train workers")
    qformer_dir = pack_dir / "qformer_tokenizer"
    with session as ray:
        for k, stage in enumerate(stages):
            summaries.append(_train_one(model, stage, cfg, pack_dir, stage_dir, previous, ray, log))
            record.rows_in += summaries[-1]["steps"] * cfg["batch_size"] * cfg["grad_accum"] * cfg["workers"]
            previous = str(stage_dir / stage.name)
            if k < len(stages) - 1:  # held-out accuracy after every stage (the last one's is below)
                _evaluate_stage(model, preset, encoder, stage, summaries[-1], Path(out), cfg, qformer_dir, log)
    model = load_model(previous, device=cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    # the model is scored at the resolution it last trained at
    evaluation = _evaluate_stage(model, preset, encoder, stages[-1], summaries[-1], Path(out), cfg, qformer_dir, log)
    record.rows_out = record.rows_in  # training drops nothing; the evaluation reports its own count
    # train.image_roots, so `loom report` finds the wrong answers' images where training found them
    record.extra.update(preset=preset.name, stages=summaries, evaluation=evaluation, workers=cfg["workers"],
                        image_roots=cfg["image_roots"])
    return record.finish(stage_dir)


def _evaluate_stage(model, preset, encoder: Encoder, stage, summary: dict, out: Path, cfg: dict, qformer_dir: Path,
                    log) -> dict | None:
    """A trained stage's held-out VQA (its predictions.parquet and TensorBoard scalars in the stage's folder) and
    captions, where asked; their figures go into its `summary`. The VQA result, the captions' inside it."""
    settings, render = cfg["evaluate"], out / "render"
    evaluation = evaluate_vqa(model, preset, encoder, render, settings, log, qformer_dir, stage.image_size,
                              cfg["image_roots"], stage_dir=out / "train" / stage.name, step=summary["steps"])
    summary["accuracy"] = evaluation["accuracy"] if evaluation else None
    if settings["captions"]:
        captions = evaluate_captions(model, preset, encoder, render, settings["captions"], log, qformer_dir,
                                     stage.image_size, cfg["image_roots"])
        summary["cider"] = captions["cider"] if captions else None
        if evaluation is not None and captions is not None:
            evaluation["captions"] = captions
    return evaluation


def _train_one(model, stage, cfg: dict, pack_dir: Path, stage_dir: Path, previous: str | None, ray, log) -> dict:
    """One stage, here or on Ray Train workers; its summary with the loss curve."""
    from vlm.train import TrainConfig, train_stage

    train_config = TrainConfig(
        batch_size=cfg["batch_size"], grad_accum=cfg["grad_accum"], seed=cfg["seed"],
        checkpoint_every=cfg["checkpoint_every"], device=cfg["device"], init_from=previous, strategy=cfg["strategy"],
        max_grad_norm=cfg["max_grad_norm"], activation_checkpointing=cfg["activation_checkpointing"],
        compile=cfg["compile"], image_roots=cfg["image_roots"], threads=cfg["threads"], log_every=cfg["log_every"])
    out_dir = stage_dir / stage.name
    if ray is None:
        summary = train_stage(model, stage, pack_dir / stage.data, out_dir, train_config, log=log)
    else:  # the model already holds the previous stage's weights, which the workers start from
        use_gpu = ray.cluster_resources().get("GPU", 0) >= cfg["workers"]
        summary = train_stage_on_ray(model, stage, pack_dir / stage.data, out_dir, train_config, cfg["workers"], use_gpu)
    curve = [[row["step"], row["loss"]] for row in map(json.loads, (out_dir / "log.jsonl").read_text().splitlines())]
    lora = stage.lora
    through = f"; {lora.group} through LoRA rank {lora.rank} on {', '.join(lora.targets)}" if lora else ""
    log(f"train: stage {stage.name} ({', '.join(stage.trainable)}{through}): {len(curve)} steps, "
        f"loss {curve[0][1]:.3f} → {curve[-1][1]:.3f}")
    return {**summary, "name": stage.name, "trainable": list(stage.trainable), "data": stage.data,
            "steps": len(curve), "final_loss": curve[-1][1] if curve else float("nan"), "loss_curve": curve}


# ---------------------------------------------------------------------------------------------
# A stage on N workers: Ray Train (vlm/ itself never imports Ray)
# ---------------------------------------------------------------------------------------------

def train_stage_on_ray(model, stage, pack_dir: str | Path, out_dir: str | Path, config, workers: int,
                       use_gpu: bool = False) -> dict:
    """`train_stage` on `workers` Ray Train workers (TorchTrainer, DDP; gloo on CPU, NCCL on GPU), in the Ray
    this process has joined. Each worker rebuilds the model from its config and the caller's weights and
    reads its share of every step's rows; the stage's checkpoint is then loaded back into `model`."""
    import tempfile
    from dataclasses import asdict

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import save_file

    from vlm.checkpoint import load_weights, weights_to_save
    from vlm.train import COMPLETE, checkpoint_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as start:  # the weights every worker starts from
        save_file(weights_to_save(model), Path(start) / "model.safetensors")
        arguments = {"model": model.config_dict(), "weights": str(Path(start) / "model.safetensors"),
                     "stage": asdict(stage), "pack_dir": str(pack_dir), "out_dir": str(out_dir),
                     "config": asdict(config)}
        trainer = TorchTrainer(_train_worker, train_loop_config=arguments,
                               scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                               run_config=RunConfig(name=f"loom-{stage.name}", storage_path=str(out_dir / "ray")))
        trainer.fit()
    load_weights(model, checkpoint_dir(out_dir) / "model.safetensors")
    return json.loads((out_dir / COMPLETE).read_text())


def _train_worker(arguments: dict) -> None:
    """One Ray Train worker: the model rebuilt, then the same loop as one process, on its rows."""
    from vlm.builders import from_config_dict
    from vlm.checkpoint import load_weights
    from vlm.preset import Stage
    from vlm.train import TrainConfig, train_stage

    model = from_config_dict(arguments["model"])
    load_weights(model, Path(arguments["weights"]))
    stage = Stage.from_dict(arguments["stage"])
    config = TrainConfig(**{**arguments["config"], "init_from": None})
    train_stage(model, stage, arguments["pack_dir"], arguments["out_dir"], config)
