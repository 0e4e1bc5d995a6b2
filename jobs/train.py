"""`loom train`: packed sequences → a model trained through its preset's stages, then evaluated."""
from __future__ import annotations

import collections
import contextlib
import json
from pathlib import Path

from jobs.config import ConfigError, require, section
from pipelines.manifest import StageRecord, is_complete, manifest_hash, read_manifest, start_or_resume
from pipelines.pack_window import packed_shards
from pipelines.render import read_render_output
from pipelines.tokenize import Encoder, load_tokenizer
from templates.chat import get_chat_format

# The train section's keys, types and defaults: jobs/schema.py's Train.
SCHEDULE_KEYS = {"lr", "epochs", "max_steps", "warmup_ratio", "weight_decay", "betas"}
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
    from vlm.model import ATTENTION_MODES
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
    from pipelines.pack_window import visual_token_counter
    from vlm.model import build_model, count_parameters

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
    return model, Encoder(tokenizer, get_chat_format(preset.chat_format), visual_token_counter(preset))


def stages_of(preset, cfg: dict) -> list:
    """The preset's stages with the config's data, trainable, objective and image_size overrides applied."""
    import dataclasses

    from vlm.model import FIXED_TOKEN_CONNECTORS

    stages = []
    for stage in preset.stages:
        overrides = {k: v for k, v in (cfg["stages"].get(stage.name) or {}).items() if k not in SCHEDULE_KEYS}
        if "trainable" in overrides:
            overrides["trainable"] = tuple(overrides["trainable"])
        if "lora" in overrides:
            overrides["lora"] = lora_of(preset, stage, overrides["lora"], overrides.get("trainable", stage.trainable))
        if overrides.get("image_size") and preset.connector not in FIXED_TOKEN_CONNECTORS:
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

    from vlm.lora import check_targets
    from vlm.model import build_model

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
                evaluated = evaluate_vqa(model, preset, encoder, Path(out) / "render", cfg["evaluate"], log, qformer_dir,
                                         image_size=stage.image_size, image_roots=cfg["image_roots"])
                summaries[-1]["accuracy"] = evaluated["accuracy"] if evaluated else None
                summaries[-1]["cider"] = _caption_score(model, preset, encoder, Path(out), cfg, log, qformer_dir,
                                                        stage.image_size)
    model = load_model(previous, device=cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    image_size = stages[-1].image_size  # the model is scored at the resolution it last trained at
    evaluation = evaluate_vqa(model, preset, encoder, Path(out) / "render", cfg["evaluate"], log, qformer_dir,
                              image_size=image_size, image_roots=cfg["image_roots"])
    summaries[-1]["accuracy"] = evaluation["accuracy"] if evaluation else None
    captions = None
    if cfg["evaluate"]["captions"]:
        captions = evaluate_captions(model, preset, encoder, Path(out) / "render", cfg["evaluate"]["captions"], log,
                                     qformer_dir, image_size=image_size, image_roots=cfg["image_roots"])
        summaries[-1]["cider"] = captions["cider"] if captions else None
    if evaluation is not None and captions is not None:
        evaluation["captions"] = captions
    record.rows_out = record.rows_in  # training drops nothing; the evaluation reports its own count
    record.extra.update(preset=preset.name, stages=summaries, evaluation=evaluation, workers=cfg["workers"])
    return record.finish(stage_dir)


def _train_one(model, stage, cfg: dict, pack_dir: Path, stage_dir: Path, previous: str | None, ray, log) -> dict:
    """One stage, here or on Ray Train workers; its summary with the loss curve."""
    from vlm.train import TrainConfig, train_stage

    overrides = {k: v for k, v in (cfg["stages"].get(stage.name) or {}).items() if k in SCHEDULE_KEYS}
    train_config = TrainConfig(
        batch_size=cfg["batch_size"], grad_accum=cfg["grad_accum"], seed=cfg["seed"],
        checkpoint_every=cfg["checkpoint_every"], device=cfg["device"], init_from=previous, strategy=cfg["strategy"],
        max_grad_norm=cfg["max_grad_norm"], activation_checkpointing=cfg["activation_checkpointing"],
        compile=cfg["compile"], image_roots=cfg["image_roots"], **overrides)
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


def render_images(render_dir: Path, image_roots: dict | None) -> dict:
    """Where a render output's image references lead (ImageProcessor's root and roots): run-relative ones
    from the run folder above it, {root, path} ones from its manifest's image_roots, `image_roots` over them."""
    from vlm.data import run_roots

    run_folder = Path(render_dir).resolve().parent  # where the render lives, as pack records it
    return {"root": run_folder, "roots": run_roots(run_folder, read_manifest(render_dir) or {}, image_roots)}


def _generate_answers(model, preset, encoder: Encoder, items: list[dict], batch_size: int, max_new_tokens: int,
                      qformer_dir: Path | None, image_size: int | None = None,
                      images: dict | None = None) -> list[str]:
    """Greedy continuations of each record's first user turn (its one image, at `image_size` where a stage
    trained at its own resolution, read from where `images` says: `render_images`), decoded to text."""
    from vlm.evaluate import generate
    from vlm.images import ImageProcessor

    processor = ImageProcessor(preset, image_size=image_size, **(images or {}))
    instructions = None
    if preset.qformer_text == "instruction":  # InstructBLIP: the question in the Q-Former's vocabulary too
        from pipelines.qformer_text import QFormerInstructions

        instructions = QFormerInstructions(str(qformer_dir), min(128, preset.connector_config.get("max_position_embeddings", 512)))
    model.eval()
    device = next(model.parameters()).device
    predictions: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        prompts = [encoder.encode_prompt([r["messages"][0]], task=r["task"], images=r["images"][:1]).tolist()
                   for r in batch]
        pixels, image_inputs = _image_inputs(preset, processor, [r["images"][0] for r in batch], instructions,
                                             [r["messages"][0] for r in batch])
        outputs = generate(model, prompts, pixels.to(device), encoder.stop_id, model.pad_token_id, max_new_tokens,
                           **{k: v.to(device) for k, v in image_inputs.items()})
        predictions += [encoder.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]
    return predictions


def evaluate_captions(model, preset, encoder: Encoder, render_dir: Path, settings: dict, log=print,
                      qformer_dir: Path | None = None, image_size: int | None = None,
                      image_roots: dict | None = None) -> dict | None:
    """Greedy captions of held-out images, scored by CIDEr-D against every reference caption of the image."""
    from vlm.evaluate import cider_d

    records = read_render_output(render_dir, split=settings["split"], datasets=settings["datasets"],
                                 task="captioning") or []
    by_image: dict[str, list[dict]] = collections.defaultdict(list)  # COCO has several captions per image
    for r in records:
        by_image[r["images"][0]["path"] or r["images"][0]["key"]].append(r)
    items = [group[0] for group in by_image.values()][: settings["limit"]]
    if not items:
        log(f"train: no held-out captions to evaluate (render a split {settings['split']!r} of {settings['datasets']})")
        return None
    predictions = _generate_answers(model, preset, encoder, items, settings["batch_size"],
                                    settings["max_new_tokens"], qformer_dir, image_size,
                                    render_images(render_dir, image_roots))
    references = [[g["messages"][1]["content"] for g in by_image[k]] for k in list(by_image)[:len(items)]]
    result = {"images": len(items), "cider": cider_d(predictions, references),
              "examples": [{"caption": p, "references": refs[:3]} for p, refs in list(zip(predictions, references))[:6]]}
    log(f"evaluate: held-out captions CIDEr-D {result['cider']:.3f} on {len(items)} images")
    return result


def _image_inputs(preset, processor, images: list[dict], instructions, questions: list[dict]) -> tuple:
    """(pixel_values, other image inputs) of one image per question, as the preset's model reads them."""
    import torch

    inputs = {}
    if preset.vision_kind == "qwen2_vl":  # native resolution: patches and their grids
        from vlm.qwen2_vl import patchify

        pixels, inputs["image_grid_thw"] = patchify([processor.native(image) for image in images],
                                                    patch_size=preset.patch_size,
                                                    merge_size=preset.vision.get("spatial_merge_size", 2))
    else:
        pixels = processor.stack(images)
    if instructions is not None:
        from pipelines.qformer_text import qformer_text as _qformer_text

        ids = [instructions(_qformer_text([message], "instruction")) for message in questions]
        width = max(len(row) for row in ids)
        inputs["qformer_input_ids"] = torch.tensor([row + [instructions.pad] * (width - len(row)) for row in ids])
        inputs["qformer_attention_mask"] = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return pixels, inputs


def _caption_score(model, preset, encoder, out: Path, cfg: dict, log, qformer_dir, image_size=None) -> float | None:
    if not cfg["evaluate"]["captions"]:
        return None
    captions = evaluate_captions(model, preset, encoder, out / "render", cfg["evaluate"]["captions"], log, qformer_dir,
                                 image_size, cfg["image_roots"])
    return captions["cider"] if captions else None


def _vqa_records(render_dir: Path, settings: dict) -> tuple[list[dict], list[dict]]:
    """(held-out questions to score, training questions for the baselines: their answers and question types),
    read from the render output with only those rows and columns."""
    heldout = [r for r in read_render_output(render_dir, split=settings["split"], datasets=settings["datasets"],
                                             task="vqa") or [] if r["answers"]]
    train = read_render_output(render_dir, split="train", task="vqa", columns=["messages", "question_type"]) or []
    return (heldout[: settings["limit"]] if settings["limit"] else heldout), train


def evaluate_vqa(model, preset, encoder: Encoder, render_dir: Path, settings: dict, log=print,
                 qformer_dir: Path | None = None, image_size: int | None = None,
                 image_roots: dict | None = None) -> dict | None:
    """Greedy answers to held-out questions, scored against the majority-answer baselines. `qformer_dir` is
    the Q-Former's tokenizer the pack stage used (InstructBLIP)."""

    from vlm.evaluate import normalize_answer, vqa_accuracy

    items, train = _vqa_records(render_dir, settings)
    if not items:
        log("train: no held-out VQA records to evaluate (render a split "
            f"{settings['split']!r} of {settings['datasets']}); evaluation skipped")
        return None
    predictions = _generate_answers(model, preset, encoder, items, settings["batch_size"], settings["max_new_tokens"],
                                    qformer_dir, image_size, render_images(render_dir, image_roots))
    answers = [r["answers"] for r in items]
    scores = vqa_accuracy(predictions, answers)

    # Baselines a blind model could reach from the training answers alone.
    overall = collections.Counter(normalize_answer(r["messages"][1]["content"]) for r in train)
    majority = overall.most_common(1)[0][0]
    by_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in train:
        by_type[r["question_type"]][normalize_answer(r["messages"][1]["content"])] += 1
    type_prior = [by_type[r["question_type"]].most_common(1)[0][0] if by_type[r["question_type"]] else majority
                  for r in items]
    baselines = {
        "majority_answer": {"answer": majority, "accuracy": vqa_accuracy([majority] * len(items), answers)["exact_match"]},
        "per_question_type_majority": {"accuracy": vqa_accuracy(type_prior, answers)["exact_match"]},
    }
    per_type = collections.defaultdict(list)
    for r, p in zip(items, predictions):
        per_type[r["question_type"]].append((p, r["answers"]))
    by_question_type = {t: {"n": len(v), "accuracy": vqa_accuracy([p for p, _ in v], [a for _, a in v])["exact_match"]}
                        for t, v in sorted(per_type.items())}
    result = {
        "questions": len(items), "accuracy": scores["exact_match"], "vqa_accuracy": scores["vqa"],
        "baselines": baselines, "by_question_type": by_question_type,
        "examples": [{"question": r["messages"][0]["content"].split("\n")[1], "prediction": p, "answer": r["answers"][0]}
                     for r, p in list(zip(items, predictions))[: settings["examples"]]],
    }
    log(f"evaluate: held-out VQA accuracy {result['accuracy']:.3f} on {len(items)} questions; majority answer "
        f"{majority!r} scores {baselines['majority_answer']['accuracy']:.3f}, per-type majority "
        f"{baselines['per_question_type_majority']['accuracy']:.3f}")
    return result


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
    from vlm.checkpoint import load_weights
    from vlm.model import VisionLanguageModel
    from vlm.preset import Stage
    from vlm.train import TrainConfig, train_stage

    model = VisionLanguageModel.from_config_dict(arguments["model"])
    load_weights(model, Path(arguments["weights"]))
    stage = Stage.from_dict(arguments["stage"])
    config = TrainConfig(**{**arguments["config"], "init_from": None})
    train_stage(model, stage, arguments["pack_dir"], arguments["out_dir"], config)
