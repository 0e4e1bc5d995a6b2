"""The staged training recipe: one stage of one preset, from packed shards to a checkpoint.

Read it end to end: setup (device, frozen groups, data, optimizer, schedule),
resume or initialise, the loop (accumulate, clip, step, log, checkpoint), and
the end-of-stage marker. A stage is only "which groups are trainable, at which
learning rate, on which data": the loop is the same for every stage.

`out_dir/` after a stage:
  log.jsonl                 one line per optimizer step: step, loss, lr, tokens, ...
  train.log                 a line every log_every steps (step, loss, lr, tokens/s) and the summary
  checkpoint/               model.safetensors, config.json, optimizer.pt, scheduler.pt,
                            rng.pt, trainer_state.json (step, data position), tokenizer/,
                            checksums.json (every file's size and CRC-32, written last);
                            in a LoRA stage the weights are merged, and a mid-stage checkpoint
                            also holds lora.safetensors (the adapters and the weights under them)
  checkpoint.previous/      the checkpoint before it, kept so a damaged newest one falls back to it
  stage_complete.json       the summary; its presence makes a re-run skip the stage
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import lora
from .builders import from_config_dict
from .checkpoint import load_weights, weights_to_save
from .checkpoint_files import PREVIOUS, DamagedCheckpoint, folder_bytes, kind, verify, written_folder
from .data import DataPosition, PackedDataset
from .model import VisionLanguageModel
from .preset import LoRA, Stage
from .progress import StageProgress
from .threads import training_threads

CHECKPOINT = "checkpoint"
CHECKPOINT_FILES = ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")
COMPLETE = "stage_complete.json"
LOG = "log.jsonl"


@dataclass
class TrainConfig:
    """How to run a stage on this machine. What the stage learns and for how long (lr, epochs, max_steps, warmup,
    objective, image_size, LoRA, trainable groups, data) is the Stage's: a run's overrides are applied to it
    before it reaches the trainer (dataclasses.replace; `loom train` does it once per stage)."""

    batch_size: int = 1  # packed rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = only at the end
    activation_checkpointing: bool = False
    compile: bool = False
    device: str | None = None  # default: cuda when available
    init_from: str | None = None  # a previous stage's out_dir or checkpoint dir
    # with several workers: ddp keeps a whole model on each; fsdp shards parameters, gradients and optimizer
    # state across them (FSDP2, every transformer layer its own unit), for LLMs that do not fit one device
    strategy: str = "ddp"
    progress: bool = True  # a bar on a terminal, else a line every log_every steps (train.log has them always)
    log_every: int = 10  # optimizer steps between progress lines
    threads: int | None = None  # torch's CPU threads; None: OMP_NUM_THREADS, else the cores this process may use
    tensorboard: bool = True
    image_roots: dict[str, str] | None = None  # root name -> folder, over the render manifest's (a moved dataset)


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------

def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warmup to 1 (never 0 at step 0), then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder inside a stage's out_dir, or `path` itself if it is one."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT):
        if (candidate / "model.safetensors").exists() and (candidate / "config.json").exists():
            return candidate
    raise FileNotFoundError(f"{path}: no checkpoint (model.safetensors + config.json) here or in {path / CHECKPOINT}")


def load_model(path: str | Path, device: str | torch.device = "cpu", attn_implementation: str | None = None) -> VisionLanguageModel:
    """Rebuilds a model from a checkpoint's config.json and model.safetensors, checked against its checksums."""
    folder = checkpoint_dir(path)
    try:
        verify(folder, required=("model.safetensors", "config.json"))
    except DamagedCheckpoint as err:
        raise DamagedCheckpoint(f"{err}; train the stage again (remove {folder} and re-run) or copy the folder "
                                "again") from err
    config = json.loads((folder / "config.json").read_text())
    model = from_config_dict(config["model"], attn_implementation=attn_implementation)
    load_weights(model, folder / "model.safetensors")
    return model.to(device)


def _save_checkpoint(out_dir: Path, model, optimizer, scheduler, state: dict, tokenizer_dir: Path | None,
                     lead: bool = True, sharded: bool = False, keep_previous: bool = True) -> Path:
    """Writes a full checkpoint to a temporary folder, then swaps it in by renaming, the one it replaces kept
    as checkpoint.previous (unless `keep_previous` is False: the one it replaces was found damaged). Under
    FSDP every worker calls it (the shards are gathered to the lead, which writes)."""
    final = out_dir / CHECKPOINT
    if sharded:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights, optimizer_state = get_model_state_dict(model, options=whole), get_optimizer_state_dict(
            model, optimizer, options=whole)
    else:
        weights, optimizer_state = (weights_to_save(model), optimizer.state_dict()) if lead else (None, None)
    if not lead:
        return final
    weights, adapters = lora.merged(weights, model)  # a LoRA stage's weights are written plain, adapters merged
    # A reader sees either the previous complete checkpoint or the new one, never a half-written one.
    needed = folder_bytes(final) or _tensor_bytes([weights, optimizer_state])  # the last one's size, if any
    with written_folder(final, keep_previous, needed=needed) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps({"model": model.config_dict(), "stage": state["stage"]}, indent=2))
        if adapters and state["step"] < state["total_steps"]:  # what a resume continues from
            save_file(adapters, tmp / lora.ADAPTERS)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_states(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        if tokenizer_dir is not None and tokenizer_dir.is_dir():
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    return final


def _tensor_bytes(obj) -> int:
    """The bytes of every tensor inside nested dicts and lists: about what a checkpoint of them takes on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _load_optimizer(model, optimizer, file: Path, device: torch.device, sharded: bool) -> None:
    """The optimizer state of a checkpoint: torch's own form, or under FSDP the whole state by parameter name,
    which each worker cuts to its shards."""
    saved = _read_torch(file, map_location="cpu" if sharded else device)
    if not sharded:
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))


def _read_torch(file: Path, **options):
    """torch.load, a file it cannot read named (a checkpoint written before checksums is checked only for its
    zip structure)."""
    try:
        return torch.load(file, **options)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise DamagedCheckpoint(f"{file}: damaged {kind(file)} ({type(err).__name__}: {str(err)[:200]})") from err


def _find_resumable(out_dir: Path, log=print) -> Path | None:
    """The newest checkpoint of a stage that is whole: `checkpoint`, else `checkpoint.previous` (also what
    survives a crash between the two renames of a save) with a line naming the damaged file. None when the
    stage has none; DamagedCheckpoint naming the file when every one it has is damaged."""
    damaged = []
    for folder in (out_dir / CHECKPOINT, out_dir / f"{CHECKPOINT}{PREVIOUS}"):
        if not folder.is_dir():
            continue
        try:
            verify(folder, required=CHECKPOINT_FILES)
            step = _trainer_state(folder)["step"]
        except DamagedCheckpoint as err:
            damaged.append(str(err))
            continue
        if damaged:
            log(f"train: {damaged[0]}; resuming from the previous checkpoint instead ({folder}, step {step})")
        return folder
    if damaged:
        raise DamagedCheckpoint(f"{'; and '.join(damaged)}; no good checkpoint to resume from: remove "
                                f"{out_dir / CHECKPOINT}* to train the stage again from its start")
    return None


def _trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
        missing = {"step", "tokens", "position", "config"} - set(state)
    except (ValueError, TypeError) as err:  # TypeError: valid JSON that is not an object
        raise DamagedCheckpoint(f"{path}: damaged trainer state ({err})") from err
    if missing:
        raise DamagedCheckpoint(f"{path}: damaged trainer state (no {sorted(missing)})")
    return state


def _attach_adapters(model, stage: Stage, resumable: Path | None, seed: int) -> None:
    """A LoRA stage's adapters on its group (before sharding and the optimizer), and when it resumes, the
    adapters and unmerged weights its checkpoint holds."""
    if resumable is not None:
        saved = _trainer_state(resumable).get("lora")
        saved = LoRA.from_dict(saved) if saved else None
        if saved != stage.lora:
            raise ValueError(f"{resumable}: saved with lora={saved}, resumed with lora={stage.lora}; resume with the "
                             f"same LoRA setting (train.stages.{stage.name}.lora) or use a new out_dir")
    if stage.lora is None:
        return
    lora.attach(model, stage.lora, seed)
    if resumable is not None and (resumable / lora.ADAPTERS).exists():  # none in the end-of-stage checkpoint
        lora.load_adapters(model, resumable / lora.ADAPTERS)


def _rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------------------------
# Sharding (FSDP)
# ---------------------------------------------------------------------------------------------

STRATEGIES = ("ddp", "fsdp")


def shard(model: torch.nn.Module, device: torch.device, world: int) -> None:
    """FSDP2 over the workers: every layer of every transformer stack (vision tower, Q-Former, LLM) is a unit
    whose parameters are gathered only while it runs, the rest of the model the root unit. Parameters land
    on `device`, sharded; on a GPU they compute in bf16 and gradients are averaged in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" \
        else MixedPrecisionPolicy()
    for stack in [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]:
        layers = [layer for layer in stack if any(True for _ in layer.parameters())]
        if len(layers) > 1 and len({type(layer) for layer in layers}) == 1:  # a stack of identical layers
            for layer in layers:
                fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------

def _append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """Drops log lines after the checkpoint being resumed: those steps will run again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a stage's log.jsonl, in step order."""
    path = Path(out_dir) / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; log.jsonl is the record
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------

def train_stage(
    model: VisionLanguageModel,
    stage: Stage,
    pack_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    log=print,
) -> dict[str, Any]:
    """Trains `stage` of `model` on the packed shards in `pack_dir`; resumable, skipped once complete. `log`
    hears of a damaged checkpoint passed over for the one before it."""
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pack_dir = Path(pack_dir)

    complete = out_dir / COMPLETE
    if complete.exists():
        try:
            verify(out_dir / CHECKPOINT, required=CHECKPOINT_FILES)
        except DamagedCheckpoint as err:  # the final weights are gone: train the last steps again
            log(f"train: {err}; the stage's final checkpoint is damaged, so its last steps train again")
        else:
            # Leave the caller's model as the stage left it, so chained stages see trained weights.
            load_weights(model, checkpoint_dir(out_dir) / "model.safetensors")
            return json.loads(complete.read_text())

    # -- setup -----------------------------------------------------------------------------------
    if config.strategy not in STRATEGIES:
        raise ValueError(f"strategy {config.strategy!r}; expected one of {STRATEGIES}")
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(training_threads(config.threads))  # and what evaluates after it in this process
    # Under Ray Train (TorchTrainer) every worker runs this same loop on its share of each step's rows
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    lead = rank == 0  # only one worker writes logs and checkpoints
    # BLIP-2's stage 1 calls the Q-Former's own losses, not forward, which FSDP's hooks wrap: it is replicated
    sharded = world > 1 and config.strategy == "fsdp" and stage.objective == "lm"

    # weights in before sharding: a resumed checkpoint, else the previous stage's
    resumable = _find_resumable(out_dir, log if lead else (lambda *_: None))
    # a damaged newest checkpoint is not kept as "previous" by the next save: the one resumed from stays
    keep_previous = resumable is None or resumable.name == CHECKPOINT
    if resumable is not None:
        load_weights(model, resumable / "model.safetensors")
    elif config.init_from:
        init = checkpoint_dir(config.init_from)
        try:
            verify(init, required=("model.safetensors", "config.json"))
        except DamagedCheckpoint as err:
            raise DamagedCheckpoint(f"{err}; the stage starts from it (init_from): train that stage again") from err
        load_weights(model, init / "model.safetensors")
    model.set_trainable(stage.trainable)
    _attach_adapters(model, stage, resumable, config.seed)
    if config.activation_checkpointing:
        model.enable_activation_checkpointing()
    if sharded:
        shard(model, device, world)
    else:
        model.to(device)
    model.train()
    dataset = PackedDataset(pack_dir, batch_size=config.batch_size, seed=config.seed, preset=model.preset,
                            rank=rank, world_size=world, image_size=stage.image_size, image_roots=config.image_roots)
    total_steps = stage.max_steps or math.ceil(stage.epochs * dataset.batches_per_epoch / config.grad_accum)
    warmup_steps = math.ceil(total_steps * stage.warmup_ratio)

    optimizer = torch.optim.AdamW(model.parameter_groups(stage.weight_decay), lr=stage.lr, betas=tuple(stage.betas),
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps))
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    # -- resume, or start from the previous stage ----------------------------------------------
    step, tokens, position = 0, 0, DataPosition()
    if resumable is not None:
        state = _trainer_state(resumable)
        for key in ("batch_size", "grad_accum", "seed"):  # these decide which rows each step sees
            if state["config"][key] != getattr(config, key):
                raise ValueError(
                    f"{resumable}: saved with {key}={state['config'][key]}, resumed with {key}={getattr(config, key)}; "
                    f"the data position would point at different rows. Resume with the same {key} or use a new out_dir"
                )
        if state.get("sharded", False) != sharded:
            raise ValueError(f"{resumable}: saved {'with' if state.get('sharded') else 'without'} FSDP sharding, "
                             f"resumed {'with' if sharded else 'without'}; its optimizer state is in the other form. "
                             "Resume with the strategy and worker count it was saved with")
        _load_optimizer(model, optimizer, resumable / "optimizer.pt", device, sharded)
        scheduler.load_state_dict(_read_torch(resumable / "scheduler.pt"))
        _restore_rng(_read_torch(resumable / "rng.pt", weights_only=False))
        step, tokens, position = state["step"], state["tokens"], DataPosition(**state["position"])
        if lead:  # one writer: workers rewriting it at once can leave it empty
            _truncate_log(out_dir / LOG, step)
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        if lead:
            (out_dir / LOG).unlink(missing_ok=True)
    resumed_from = step

    if config.compile:
        # Compile the two towers in place (state-dict keys unchanged); the glue between them
        # (image-count check, scatter, loss on supervised positions) is data-dependent and
        # stays eager rather than breaking the graph.
        model.vision_tower.compile()
        model.language_model.model.compile()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    writer = _tensorboard(out_dir) if config.tensorboard and lead else None
    tokenizer_dir = pack_dir / "tokenizer"

    def state_now() -> dict[str, Any]:
        return {
            "stage": stage.name, "step": step, "total_steps": total_steps, "tokens": tokens,
            "position": asdict(position), "seed": config.seed, "pack_dir": str(pack_dir),
            "image_size": stage.image_size,  # the stage's own resolution, if any: what an export prepares images at
            "config": asdict(config), "sharded": sharded, "lora": stage.lora and stage.lora.to_dict(),
        }

    # Gradients are averaged across workers by DDP; each worker's loss is scaled by the world size so the
    # average equals the gradient of the whole step's loss, normalised by the whole step's tokens.
    # (BLIP-2's stage 1 calls the Q-Former's own losses, not the model's forward: its gradients are averaged
    # by hand after backward instead.)
    runner = model
    if world > 1 and stage.objective == "lm" and not sharded:
        runner = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    averaged_by_hand = world > 1 and runner is model and not sharded  # DDP and FSDP average in backward

    # -- the loop ----------------------------------------------------------------------------------
    stream = dataset.batches(start=position)
    started = time.time()
    progress = StageProgress(f"{model.preset.name}/{stage.name}", total_steps, step, tokens, out_dir, config.log_every,
                             log, show=config.progress) if lead else None
    while step < total_steps:
        step_start = time.time()
        micro_batches = []
        for _ in range(config.grad_accum):
            batch, position = next(stream)
            micro_batches.append(batch)
        # Normalise by the step's supervised tokens, not per micro-batch: a token weighs the same
        # whichever micro-batch or packed row it landed in.
        step_tokens = sum(b.num_tokens for b in micro_batches)
        if world > 1:  # every worker normalises by the tokens of the whole step, on all workers
            counted = torch.tensor([step_tokens], dtype=torch.float64)
            torch.distributed.all_reduce(counted)
            step_tokens = int(counted.item())
        loss_value = 0.0
        for batch in micro_batches:
            batch = batch.to(device)
            with autocast:
                if stage.objective == "itc_itm_itg":  # BLIP-2 stage 1: images against their captions
                    loss = model.representation_losses(batch.pixel_values, batch.qformer_input_ids,
                                                       batch.qformer_attention_mask)["loss"] / (len(micro_batches) * world)
                else:
                    inputs = batch.model_inputs()
                    if stage.qformer_text is None:  # the queries alone (BLIP-2's generative stage)
                        inputs.pop("qformer_input_ids", None), inputs.pop("qformer_attention_mask", None)
                    loss = runner(**inputs, num_items_in_batch=max(step_tokens, 1), return_logits=False).loss
            (loss * world).backward()
            loss_value += loss.item()
            tokens += batch.real_tokens
        if world > 1:  # the step's loss is the sum of every worker's share
            shared = torch.tensor([loss_value], dtype=torch.float64)
            torch.distributed.all_reduce(shared)
            loss_value = float(shared.item())
            if averaged_by_hand:
                for parameter in trainable:
                    if parameter.grad is None:
                        parameter.grad = torch.zeros_like(parameter)
                    torch.distributed.all_reduce(parameter.grad)
                    parameter.grad /= world
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients give a distributed norm
            grad_norm = grad_norm.full_tensor()
        current_lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        record = {
            "step": step, "loss": loss_value, "lr": current_lr, "tokens": tokens,
            "supervised_tokens": step_tokens, "grad_norm": float(grad_norm), "epoch": position.epoch,
            "step_s": round(time.time() - step_start, 4),
        }
        if lead:
            _append_log(out_dir / LOG, record)
        if writer is not None:
            writer.add_scalar("train/loss", loss_value, step)
            writer.add_scalar("train/lr", current_lr, step)
        if progress is not None:
            progress.step(step, loss_value, current_lr, tokens)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
            _save_checkpoint(out_dir, model, optimizer, scheduler, state_now(), tokenizer_dir, lead, sharded,
                             keep_previous)
            keep_previous = True
    if progress is not None:
        progress.close(step, tokens)
    if writer is not None:
        writer.close()

    # -- end of stage ------------------------------------------------------------------------------
    final = _save_checkpoint(out_dir, model, optimizer, scheduler, state_now(), tokenizer_dir, lead, sharded,
                             keep_previous)
    if not lead:  # the lead worker writes the checkpoint; the others are done
        torch.distributed.barrier()
        return {"stage": stage.name, "steps": step, "rank": rank}
    if lora.layers(model) and not sharded:  # the caller's model leaves plain, as saved, for the next stage
        lora.detach(model)
        load_weights(model, final / "model.safetensors")
    logged = read_log(out_dir)
    summary = {
        "preset": model.preset.name,
        "stage": stage.name,
        "trainable_groups": list(stage.trainable),
        "lora": stage.lora and stage.lora.to_dict(),
        "trainable_params": sum(p.numel() for p in trainable),
        "frozen_params": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        "steps": step,
        "resumed_from_step": resumed_from,
        "first_loss": logged[0]["loss"] if logged else None,
        "final_loss": logged[-1]["loss"] if logged else None,
        "tokens": tokens,
        "wall_s": round(time.time() - started, 2),
        "device": str(device),
        "checkpoint": str(final),
    }
    tmp = complete.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, complete)
    if world > 1:
        torch.distributed.barrier()
    return summary
