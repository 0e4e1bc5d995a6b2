"""Training throughput: packed against dynamically padded batches of the same samples, Loom's model against
transformers' own LLaVA, in one run on one GPU.

    python bench/train_throughput.py [--steps 20] [--warmup 3] [--shape 1b] [--attention auto]
                                     [--no-reference] [--json /tmp/loom-bench-train.json]

The model: LLaVA-1.5's layout at about 1B parameters: a frozen CLIP ViT-L/14-336 (576 visual tokens per
image), the two-layer MLP projector, and a 1.1B Llama (TinyLlama's shape: 22 layers, width 2048, 4 KV
heads), randomly initialised (throughput does not depend on the weights; nothing is downloaded). The
projector and the LLM train, as in LLaVA's second stage, with AdamW, gradient clipping, bf16 autocast and
activation checkpointing, as vlm.train runs a stage.

The data: LLaVA-1.5-like samples (bench/pack.py's `llava15` mix: short-answer VQA, descriptions,
multi-turn and OCR conversations, 10% text-only), the loss on their text. Each step takes either
- packed: 8 rows of 2048 tokens, the samples placed by `assign_bins` (best-fit decreasing), attention
  kept inside each sample (`segment_sdpa`, or `flash_attention_2`'s varlen kernel when installed), or
- padded: 16 samples in order, padded to the longest.
Batches are built in memory before timing: the figures are the training step's, without data loading.

The reference: transformers' `LlavaForConditionalGeneration` (sdpa, gradient checkpointing, the same
shapes, AdamW), on the same padded batches and on the same packed rows (causal attention over the whole
row, as a plain `Trainer` packs).

Reported per setting: useful (non-pad) tokens/s, visual tokens included; the packed/padded ratio; and MFU,
6·N FLOPs per useful token (N: LLM + projector parameters) over the GPU's dense bf16 peak (989 TFLOP/s
for an H100 SXM, `--peak-tflops`). On a CPU, `--shape tiny` checks that the script runs; its figures mean
nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pack import MIXES  # noqa: E402 - bench/pack.py: the LLaVA-1.5-like length mix

SHAPES = {
    "1b": {
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
                   "layer_norm_eps": 1e-5},
        "llm": {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False},
        "seq_len": 2048, "packed_rows": 8, "padded_samples": 16,
    },
    "tiny": {  # a CPU check that every path runs
        "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "image_size": 56, "patch_size": 14, "projection_dim": 64, "hidden_act": "quick_gelu",
                   "layer_norm_eps": 1e-5},
        "llm": {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
                "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False},
        "seq_len": 512, "packed_rows": 2, "padded_samples": 4,
    },
}
IMAGE_TOKEN = 3  # an id of the vocabulary given to images; 0 pads


def samples(count: int, visual_tokens: int, seq_len: int, seed: int = 0) -> list[tuple[int, int]]:
    """(images, text tokens) of `count` samples of the llava15 mix, scaled to `visual_tokens` per image and
    cut to fit `seq_len`."""
    rng = np.random.default_rng(seed)
    drawn = []
    for share, visual, text in MIXES["llava15"]:
        n = int(round(share * count))
        scale = seq_len / 2048
        lengths = np.maximum(4, (text(rng, n) * scale).astype(int))
        images = 1 if visual else 0
        drawn += [(images, int(min(t, seq_len - images * visual_tokens))) for t in lengths]
    order = rng.permutation(len(drawn))
    return [drawn[i] for i in order[:count]]


@dataclasses.dataclass
class Layout:
    """One step's tensors: token rows, labels, where samples start, and the images in order."""

    input_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L)
    document_ids: torch.Tensor  # (B, L), padding a document of its own
    pixel_values: torch.Tensor  # (N, 3, H, W)
    useful_tokens: int


def sample_tokens(images: int, text: int, visual_tokens: int, vocab: int, rng) -> tuple[list[int], list[int]]:
    """A sample's ids (the image first, then text) and labels (its text learnt, as an answer is)."""
    ids = [IMAGE_TOKEN] * (images * visual_tokens) + rng.integers(4, vocab, text).tolist()
    labels = [-100] * (images * visual_tokens) + ids[images * visual_tokens:]
    return ids, labels


def layout(rows: list[list[tuple[int, int]]], visual_tokens: int, vocab: int, image_size: int, rng) -> Layout:
    """Rows of samples, each row its samples one after another, padded to the longest row."""
    built = []
    for row in rows:
        ids, labels, docs = [], [], []
        for k, (images, text) in enumerate(row):
            sample_ids, sample_labels = sample_tokens(images, text, visual_tokens, vocab, rng)
            ids += sample_ids
            labels += sample_labels
            docs += [k] * len(sample_ids)
        built.append((ids, labels, docs))
    width = max(len(ids) for ids, _, _ in built)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    document_ids = torch.empty((len(rows), width), dtype=torch.long)
    for b, (ids, row_labels, docs) in enumerate(built):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, :len(ids)] = torch.tensor(row_labels)
        document_ids[b, :len(ids)] = torch.tensor(docs)
        document_ids[b, len(ids):] = (docs[-1] + 1) if docs else 0
    images = sum(images for row in rows for images, _ in row)
    pixels = torch.randn(images, 3, image_size, image_size)
    return Layout(input_ids, labels, document_ids, pixels, sum(len(ids) for ids, _, _ in built))


def steps_of(data: list[tuple[int, int]], shape: dict, visual_tokens: int, packed: bool, count: int, rng) -> list[Layout]:
    """`count` steps of the samples: packed rows placed by assign_bins, or padded batches in order."""
    from pipelines.pack import assign_bins

    vocab, size = shape["llm"]["vocab_size"], shape["vision"]["image_size"]
    if not packed:
        per = shape["padded_samples"]
        return [layout([[s] for s in data[k * per:(k + 1) * per]], visual_tokens, vocab, size, rng) for k in range(count)]
    lengths = np.array([images * visual_tokens + text for images, text in data])
    bins = assign_bins(lengths, shape["seq_len"])
    rows: list[list[tuple[int, int]]] = [[] for _ in range(int(bins.max()) + 1)]
    for sample, b in zip(data, bins):
        rows[b].append(sample)
    rows = [row for row in rows if row]
    per = shape["packed_rows"]
    return [layout(rows[k * per:(k + 1) * per], visual_tokens, vocab, size, rng) for k in range(count)]


def loom_model(shape: dict, attention: str):
    import vlm
    from vlm.builders import build_model

    preset = dataclasses.replace(vlm.get_preset("llava-1.5"), name=f"llava-1.5-bench-{shape['llm']['hidden_size']}",
                                 vision=shape["vision"], llm=shape["llm"], image_size=shape["vision"]["image_size"],
                                 visual_tokens=(shape["vision"]["image_size"] // shape["vision"]["patch_size"]) ** 2)
    model = build_model(preset, shape["llm"]["vocab_size"], IMAGE_TOKEN, 0, attn_implementation=attention)
    model.set_trainable(("connector", "llm"))
    model.enable_activation_checkpointing()
    return model, preset.visual_tokens


def reference_model(shape: dict):
    """transformers' LlavaForConditionalGeneration of the same shapes: sdpa, gradient checkpointing."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(vision_config=CLIPVisionConfig(**shape["vision"]), text_config=LlamaConfig(**shape["llm"]),
                         image_token_index=IMAGE_TOKEN, projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    config._attn_implementation = "sdpa"
    config.text_config.use_cache = False
    model = LlavaForConditionalGeneration(config)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("vision_tower" not in name)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def loom_step(model, batch: Layout, device) -> torch.Tensor:
    supervised = int((batch.labels[:, 1:] != -100).sum())
    return model(input_ids=batch.input_ids.to(device), pixel_values=batch.pixel_values.to(device),
                 labels=batch.labels.to(device), document_ids=batch.document_ids.to(device),
                 num_items_in_batch=max(supervised, 1), return_logits=False).loss


def reference_step(model, batch: Layout, device) -> torch.Tensor:
    mask = (batch.input_ids != 0).long()  # the padding; packed rows are causal over the whole row
    return model(input_ids=batch.input_ids.to(device), pixel_values=batch.pixel_values.to(device),
                 attention_mask=mask.to(device), labels=batch.labels.to(device)).loss


def measure(model, step_fn, batches: list[Layout], warmup: int, device) -> dict:
    """Training steps (forward, backward, clipping, AdamW) over `batches`; the first `warmup` untimed."""
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    tokens, started = 0, None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for k, batch in enumerate(batches):
        if k == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with autocast:
            loss = step_fn(model, batch, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if k >= warmup:
            tokens += batch.useful_tokens
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {"steps": len(batches) - warmup, "useful_tokens": tokens, "seconds": round(seconds, 3),
              "tokens_per_s": tokens / seconds, "loss": float(loss.detach())}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    model.to("cpu")
    del optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--attention", default="auto", help="Loom's packed attention: auto (flash_attention_2 "
                        "when installed, else segment_sdpa), segment_sdpa, flex_attention, flash_attention_2")
    parser.add_argument("--no-reference", action="store_true", help="skip transformers' LlavaForConditionalGeneration")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--json", default="/tmp/loom-bench-train.json")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = SHAPES[args.shape]
    attention = args.attention
    if attention == "auto":
        import importlib.util

        attention = "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "segment_sdpa"
    count = args.steps + args.warmup
    model, visual_tokens = loom_model(shape, attention)
    n = sum(p.numel() for name, module in model.groups.items() if name != "vision" for p in module.parameters())
    data = samples(count * max(shape["padded_samples"], shape["packed_rows"] * 8), visual_tokens, shape["seq_len"])
    rng = np.random.default_rng(1)
    batches = {"packed": steps_of(data, shape, visual_tokens, True, count, rng),
               "padded": steps_of(data, shape, visual_tokens, False, count, rng)}
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "shape": args.shape,
               "llm_and_projector_parameters": n, "attention": attention, "settings": {}}

    def report(name: str, result: dict) -> None:
        result["mfu"] = 6 * n * result["tokens_per_s"] / (args.peak_tflops * 1e12)
        results["settings"][name] = result
        print(f"{name:>18}: {result['tokens_per_s']:>10.1f} useful tok/s   MFU {result['mfu']:.3%}   "
              f"{result.get('peak_memory_gib', '-')} GiB", flush=True)

    report("loom packed", measure(model, loom_step, batches["packed"], args.warmup, device))
    model.set_attention("sdpa")
    report("loom padded", measure(model, loom_step, batches["padded"], args.warmup, device))
    del model
    if not args.no_reference:
        reference = reference_model(shape)
        report("reference packed", measure(reference, reference_step, batches["packed"], args.warmup, device))
        report("reference padded", measure(reference, reference_step, batches["padded"], args.warmup, device))
    settings = results["settings"]
    results["packed_over_padded"] = settings["loom packed"]["tokens_per_s"] / settings["loom padded"]["tokens_per_s"]
    print(f"Loom packed / padded: {results['packed_over_padded']:.2f}x")
    if "reference packed" in settings:
        results["loom_packed_over_reference_packed"] = (settings["loom packed"]["tokens_per_s"]
                                                        / settings["reference packed"]["tokens_per_s"])
        print(f"Loom packed / reference packed: {results['loom_packed_over_reference_packed']:.2f}x")
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
