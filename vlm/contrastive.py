"""Contrastive pretraining of a preset's vision tower on image-caption pairs: CLIP's objective.

Real runs start every tower slot from a contrastively pretrained ViT (OpenAI CLIP for LLaVA, EVA-CLIP for
BLIP-2); a frozen random tower cannot tell a triangle from a square. This recipe makes such a tower from a
pairs set: transformers' `CLIPModel`, its vision side the preset's own tower class and shape (a CLIP ViT,
or BLIP-2's EVA ViT as EVA-CLIP pairs one with CLIP's text side), its text side a small CLIP text encoder
over the caller's tokenizer, trained with `CLIPModel(..., return_loss=True)`: the symmetric InfoNCE loss
over a batch's image-caption similarities, with a learned temperature capped at 100 as CLIP caps it.

Read it end to end: `contrastive_model` builds the pair of encoders, `pretrain` runs the loop (AdamW,
warmup + cosine, one line of `log.jsonl` per step), `retrieval` scores held-out pairs, `save_tower` writes
the folder a preset's `train.init.vision` reads:
- a CLIP tower: the whole `CLIPModel` (config.json, model.safetensors) and its tokenizer, the layout of
  openai/clip-vit-large-patch14, so `CLIPVisionModel.from_pretrained` and `CLIPModel.from_pretrained` read it;
- an EVA tower: the `Blip2VisionModel` alone (transformers has no class for an EVA ViT beside a CLIP text
  encoder), which `Blip2VisionModel.from_pretrained` reads.
The stage is short (seconds to minutes at the shapes world's size), so a killed run starts it over.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .images import ImageProcessor
from .preset import Preset
from .progress import StageProgress
from .saving import save_beside
from .train import LOG, warmup_cosine
from .vision import build_vision_tower

CONTRASTIVE_KINDS = ("clip", "eva")  # towers with a pooled CLS output; Qwen-VL's and Qwen2-VL's train in their stage 1
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned temperature so logits stay within x100


@dataclass
class PretrainConfig:
    """How long and how fast the contrastive stage trains."""

    epochs: int = 20
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 64  # pairs per step: each image's negatives are the other captions of its batch
    lr: float = 2e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)  # CLIP's
    max_grad_norm: float = 1.0
    seed: int = 0
    image_size: int | None = None  # default: the preset's
    device: str | None = None  # default: cuda when available
    progress: bool = True


def contrastive_model(preset: Preset, vocab_size: int, eos_token_id: int, pad_token_id: int,
                      text_layers: int = 2, max_caption_tokens: int = 77, seed: int = 0):
    """A `CLIPModel` whose vision side is `preset`'s tower (its class and shape, randomly initialised) and
    whose text side is a CLIP text encoder as wide as the tower, `text_layers` deep, reading
    `vocab_size` tokens and pooling each caption at its first `eos_token_id`."""
    from transformers import CLIPConfig, CLIPModel

    if preset.vision_kind not in CONTRASTIVE_KINDS:
        raise ValueError(f"preset {preset.name}: its {preset.vision_kind} tower has no pooled image embedding to "
                         f"pretrain contrastively; towers of kind {' or '.join(CONTRASTIVE_KINDS)} can be (Qwen-VL and "
                         "Qwen2-VL train their towers in their own first stage)")
    vision = preset.vision
    width = vision["hidden_size"]
    text = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=text_layers,
                num_attention_heads=vision["num_attention_heads"], max_position_embeddings=max_caption_tokens,
                hidden_act="quick_gelu", eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None)
    if preset.vision_kind == "clip":
        vision_config = vision
    else:  # a one-layer stand-in of the EVA tower's width, replaced by the EVA tower itself below
        vision_config = {k: vision[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                "image_size", "patch_size")}
        vision_config["num_hidden_layers"] = 1
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision_config,
                                 projection_dim=vision.get("projection_dim", width)))
    if preset.vision_kind != "clip":
        # EVA-CLIP: BLIP-2's EVA ViT beside CLIP's text side; both give the CLS token after their last
        # LayerNorm as pooler_output, which is what CLIPModel projects
        model.vision_model = build_vision_tower(preset.vision_kind, vision)
    return model


def caption_batch(captions: Sequence[Sequence[int]], pad_token_id: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (N, T): token id lists padded on the right, cut to `max_tokens`
    with their last token (the end of text, where CLIP pools) kept."""
    rows = [list(ids[: max_tokens - 1]) + [ids[-1]] if len(ids) > max_tokens else list(ids) for ids in captions]
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return input_ids, attention_mask


def _pixels(processor: ImageProcessor, images: Sequence[Any]) -> torch.Tensor:
    return torch.stack([processor(image) for image in images])  # (N, 3, H, W)


def pretrain(model, preset: Preset, images: Sequence[Any], captions: Sequence[Sequence[int]], out_dir: str | Path,
             config: PretrainConfig | None = None, log=print) -> dict[str, Any]:
    """Trains `model` (from `contrastive_model`) on pairs (`images[i]` references, `captions[i]` token ids)
    with CLIP's loss; writes `out_dir/log.jsonl` and returns the run's summary."""
    config = config or PretrainConfig()
    if len(images) != len(captions) or len(images) < 2:
        raise ValueError(f"contrastive pretraining needs two or more image-caption pairs; got {len(images)} images "
                         f"and {len(captions)} captions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    image_size = config.image_size or preset.image_size
    processor = ImageProcessor(preset, image_size=image_size)
    other_size = image_size != preset.image_size  # train at another resolution: positions interpolated
    pad, max_tokens = model.config.text_config.pad_token_id, model.config.text_config.max_position_embeddings
    # every image decoded once: at this scale decoding would otherwise cost more than the steps
    pixels = _pixels(processor, images)  # (N, 3, H, W)

    batch_size = min(config.batch_size, len(images))
    batches_per_epoch = len(images) // batch_size  # the last, smaller batch is dropped: fewer negatives
    total_steps = config.max_steps or config.epochs * batches_per_epoch
    optimizer = torch.optim.AdamW(_decay_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, math.ceil(total_steps * config.warmup_ratio)))
    model.to(device).train()
    order = random.Random(config.seed)
    torch.manual_seed(config.seed)

    started, step, epoch = time.time(), 0, 0
    # a bar on a terminal, else a line every 10 steps; always in out_dir/train.log (vlm/progress.py)
    progress = StageProgress(f"{preset.name}/tower", total_steps, 0, 0, out_dir, log=log, show=config.progress,
                             unit="pairs")
    with (out_dir / LOG).open("w") as log_file:  # one line per step; a run starts over, so does its log
        while step < total_steps:
            permutation = list(range(len(images)))
            order.shuffle(permutation)
            for start in range(0, batches_per_epoch * batch_size, batch_size):
                if step >= total_steps:
                    break
                rows = permutation[start:start + batch_size]
                input_ids, attention_mask = caption_batch([captions[i] for i in rows], pad, max_tokens)
                loss = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             pixel_values=pixels[rows].to(device), return_loss=True,
                             interpolate_pos_encoding=other_size).loss
                loss.backward()
                loss_value = loss.item()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                current_lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                step += 1
                log_file.write(json.dumps({"step": step, "loss": loss_value, "lr": current_lr, "epoch": epoch,
                                           "grad_norm": float(grad_norm),
                                           "temperature": 1 / model.logit_scale.exp().item()}) + "\n")
                progress.step(step, loss_value, current_lr, step * batch_size)
            epoch += 1
    progress.close(step, step * batch_size)
    first, last = progress.first_loss, progress.last_loss  # a run starts over, so these are its log's ends
    summary = {"preset": preset.name, "vision_kind": preset.vision_kind, "pairs": len(images), "steps": step,
               "epochs": epoch, "batch_size": batch_size, "image_size": image_size,
               "first_loss": first, "final_loss": last, "wall_s": round(time.time() - started, 2),
               "device": str(device)}
    log(f"tower: {preset.name} {preset.vision_kind} tower, {len(images)} pairs, {step} steps of {batch_size}: "
        f"CLIP loss {first:.3f} → {last:.3f} in {summary['wall_s']:.1f}s")
    return summary


def _decay_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as CLIP trains: no decay on gains, biases, embeddings' class token or the temperature."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (decay if parameter.dim() >= 2 and "embedding" not in name else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def embed(model, preset: Preset, images: Sequence[Any] | None = None, captions: Sequence[Sequence[int]] | None = None,
          image_size: int | None = None, batch_size: int = 128) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(image embeddings (N, D), caption embeddings (M, D)), unit length, in the shared space."""
    model.eval()
    device = next(model.parameters()).device
    size = image_size or preset.image_size
    image_embeds = text_embeds = None
    if images is not None:
        processor = ImageProcessor(preset, image_size=size)
        parts = [model.get_image_features(pixel_values=_pixels(processor, images[i:i + batch_size]).to(device),
                                          interpolate_pos_encoding=size != preset.image_size).pooler_output
                 for i in range(0, len(images), batch_size)]
        image_embeds = torch.nn.functional.normalize(torch.cat(parts), dim=-1)
    if captions is not None:
        pad, max_tokens = model.config.text_config.pad_token_id, model.config.text_config.max_position_embeddings
        parts = []
        for i in range(0, len(captions), batch_size):
            input_ids, attention_mask = caption_batch(captions[i:i + batch_size], pad, max_tokens)
            parts.append(model.get_text_features(input_ids=input_ids.to(device),
                                                 attention_mask=attention_mask.to(device)).pooler_output)
        text_embeds = torch.nn.functional.normalize(torch.cat(parts), dim=-1)
    return image_embeds, text_embeds


def retrieval(model, preset: Preset, images: Sequence[Any], captions: Sequence[Sequence[int]],
              image_size: int | None = None) -> dict[str, Any]:
    """Top-1 retrieval among N held-out pairs: how often an image's nearest caption is its own
    (image_to_text) and a caption's nearest image is its own (text_to_image); chance is 1/N."""
    image_embeds, text_embeds = embed(model, preset, images, captions, image_size)
    similarity = image_embeds @ text_embeds.T  # (N images, N captions)
    own = torch.arange(len(images))
    return {"pairs": len(images), "chance": round(1 / len(images), 4),
            "image_to_text": round((similarity.argmax(dim=1) == own).float().mean().item(), 4),
            "text_to_image": round((similarity.argmax(dim=0) == own).float().mean().item(), 4)}


def save_tower(model, preset: Preset, path: str | Path) -> Path:
    """Write the pretrained tower into folder `path`, beside the caption tokenizer already trained there (a
    CLIP tower as its whole CLIPModel, an EVA tower as its Blip2VisionModel; see the module docstring), each
    file written whole before it replaces the one of that name."""
    return save_beside(model if preset.vision_kind == "clip" else model.vision_model, path)
