"""Qwen-VL's published checkpoint layout in: a folder as huggingface.co/Qwen/Qwen-VL ships it, as Loom's qwen-vl.

transformers has no Qwen-VL class: the checkpoint carries its own modeling code (`modeling_qwen.py`,
`visual.py`) and a config.json with `model_type: "qwen"` and a `visual` entry. Its weights are named
`transformer.*` and `lm_head.weight`; this module reads them, sharded safetensors or pytorch_model*.bin,
into Loom's model, which computes the same function (tested against a reference forward written from that
code, within 1e-5 in fp32):

  transformer.visual.attn_pool.*        -> connector.*                 (the Resampler: vlm.connectors.resampler)
  transformer.visual.ln_post.*, .proj   -> connector.ln_post.*, .proj
  transformer.visual.*                  -> vision_tower.*              (same names: vlm.qwen_vl_vision)
  transformer.wte.weight                -> language_model.model.embed_tokens.weight
  transformer.h.N.ln_1 / ln_2           -> ...layers.N.input_layernorm / post_attention_layernorm (RMSNorm)
  transformer.h.N.attn.c_attn.{weight,bias}: the rows [q; k; v] -> self_attn.{q,k,v}_proj
  transformer.h.N.attn.c_proj.weight    -> self_attn.o_proj.weight
  transformer.h.N.mlp.w1 / w2 / c_proj  -> mlp.up_proj / gate_proj / down_proj  (QWenMLP: c_proj(w1(x) * silu(w2(x))))
  transformer.ln_f.weight               -> language_model.model.norm.weight
  lm_head.weight                        -> language_model.lm_head.weight

Qwen's LLM is Qwen2's computation in fp32 (RMSNorm, rotary on every channel of a head, q/k/v with bias and an
output without, a SwiGLU MLP of width intermediate_size / 2), so Loom runs it as its Qwen2 language model. Two
things of modeling_qwen.py Loom does not do: dynamic NTK rotary scaling and log-n attention scaling
(`use_dynamic_ntk`, `use_logn_attn`), which change nothing up to `seq_length` tokens (2048, Loom's packed
length) and only act in inference beyond it.

Images sit in the text as Qwen-VL's tokenizer writes them: `<img>` (visual.image_start_id), 256 positions,
`</img>` (image_start_id + 1); Qwen-VL writes the image path's bytes and `<imgpad>` (image_start_id + 2) into
the 256 positions and overwrites all of them with the image's features. Loom writes `<imgpad>` 256 times, its
image token here, and writes the features at the same positions.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from .builders import build_model
from .convert import assign_weights
from .preset import Preset, get_preset

RESAMPLER_HEAD_SIZE = 128  # visual.py: Resampler(num_heads=output_dim // 128)
QUERIES = 256  # visual.py: VisionTransformer(n_queries=256), never set by config.json
ENDOFTEXT = 151643  # <|endoftext|>: Qwen's pad (generation_config.json) where the folder names none
# buffers some versions of modeling_qwen.py wrote into checkpoints; nothing in the model (the code ignores them too)
IGNORED = re.compile(r"(^|\.)attn\.masked_bias$|(^|\.)rotary_emb\.inv_freq$")


def is_qwen_vl_published(config: dict) -> bool:
    """Whether a config.json is Qwen-VL's own (model_type qwen with a visual tower)."""
    return config.get("model_type") == "qwen" and isinstance(config.get("visual"), dict)


def _refuse(config_file: Path, key: str, problem: str) -> ValueError:
    return ValueError(f"{config_file}: {key}: {problem}")


def preset_of(config: dict, config_file: Path) -> tuple[Preset, int, int]:
    """(preset, image_token_id, pad_token_id) of a Qwen-VL config.json: Loom's qwen-vl at the folder's shapes."""
    visual = config["visual"]
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    for key in [k for k in needed if k not in config] + [f"visual.{k}" for k in
                ("width", "layers", "heads", "mlp_ratio", "image_size", "patch_size", "output_dim", "image_start_id")
                if k not in visual]:
        raise _refuse(config_file, key, "missing; a Qwen-VL config.json has it (see huggingface.co/Qwen/Qwen-VL)")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("rotary_pct", 1.0) != 1.0:
        raise _refuse(config_file, "rotary_pct", f"{config['rotary_pct']}; Loom's Qwen LLM rotates every channel of "
                      "a head (Qwen-VL: 1.0)")
    if not config.get("no_bias", True):
        raise _refuse(config_file, "no_bias", "false; Loom's Qwen LLM has no bias on c_proj, w1 and w2 (Qwen-VL: true)")
    if config.get("kv_channels", hidden // heads) * heads != hidden:
        raise _refuse(config_file, "kv_channels", f"{config['kv_channels']} x {heads} heads is not hidden_size {hidden}; "
                      "Loom's Qwen LLM needs heads of hidden_size / num_attention_heads (Qwen-VL: 128 x 32 = 4096)")
    if visual["output_dim"] != hidden:
        raise _refuse(config_file, "visual.output_dim", f"{visual['output_dim']}, not hidden_size {hidden}; the "
                      "resampler's output is the LLM's input")
    if visual["output_dim"] < RESAMPLER_HEAD_SIZE:
        raise _refuse(config_file, "visual.output_dim", f"{visual['output_dim']}; the resampler has output_dim // "
                      f"{RESAMPLER_HEAD_SIZE} heads, so it needs at least {RESAMPLER_HEAD_SIZE}")
    width = visual["width"]
    vision = dict(hidden_size=width, intermediate_size=int(width * visual["mlp_ratio"]), num_hidden_layers=visual["layers"],
                  num_attention_heads=visual["heads"], image_size=visual["image_size"], patch_size=visual["patch_size"])
    connector = dict(num_queries=QUERIES, embed_dim=visual["output_dim"], kv_dim=width,
                     num_heads=visual["output_dim"] // RESAMPLER_HEAD_SIZE)
    base = get_preset("qwen-vl")
    llm = dict(base.llm, vocab_size=config["vocab_size"], hidden_size=hidden,
               intermediate_size=config["intermediate_size"] // 2,  # QWenMLP: w1, w2 of width intermediate_size // 2
               num_hidden_layers=config["num_hidden_layers"], num_attention_heads=heads, num_key_value_heads=heads,
               max_position_embeddings=config.get("max_position_embeddings", base.llm["max_position_embeddings"]),
               rms_norm_eps=config.get("layer_norm_epsilon", 1e-6), rope_theta=float(config.get("rotary_emb_base", 10000)),
               tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))
    preset = dataclasses.replace(base, image_size=visual["image_size"], patch_size=visual["patch_size"],
                                 visual_tokens=QUERIES, vision=vision, connector_config=connector, llm=llm)
    generation_file = config_file.parent / "generation_config.json"
    generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    if pad is None:
        pad = ENDOFTEXT if config["vocab_size"] > ENDOFTEXT else 0
    return preset, visual["image_start_id"] + 2, int(pad)


def loom_state_dict(state: dict[str, torch.Tensor], num_layers: int, hidden_size: int) -> dict[str, torch.Tensor]:
    """The published tensors under Loom's names (c_attn split into q, k, v); an unknown name is an error."""
    renamed: dict[str, torch.Tensor] = {}
    llm_layer = re.compile(r"transformer\.h\.(\d+)\.(.+)")
    per_layer = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
                 "attn.c_proj.weight": "self_attn.o_proj.weight", "mlp.w1.weight": "mlp.up_proj.weight",
                 "mlp.w2.weight": "mlp.gate_proj.weight", "mlp.c_proj.weight": "mlp.down_proj.weight"}
    unknown = []
    for key, tensor in state.items():
        if IGNORED.search(key):
            continue
        tensor = tensor.float()
        layer = llm_layer.fullmatch(key)
        if key.startswith("transformer.visual."):
            name = key[len("transformer.visual."):]
            pooled = name.startswith("attn_pool.") or name.startswith("ln_post.") or name == "proj"
            renamed[("connector." + name.removeprefix("attn_pool.")) if pooled else "vision_tower." + name] = tensor
        elif key == "transformer.wte.weight":
            renamed["language_model.model.embed_tokens.weight"] = tensor
        elif key == "transformer.ln_f.weight":
            renamed["language_model.model.norm.weight"] = tensor
        elif key == "lm_head.weight":
            renamed["language_model.lm_head.weight"] = tensor
        elif layer and int(layer[1]) < num_layers and layer[2] in per_layer:
            renamed[f"language_model.model.layers.{layer[1]}.{per_layer[layer[2]]}"] = tensor
        elif layer and int(layer[1]) < num_layers and layer[2] in ("attn.c_attn.weight", "attn.c_attn.bias"):
            kind = layer[2].rpartition(".")[2]
            if tensor.shape[0] != 3 * hidden_size:
                raise ValueError(f"{key}: {tuple(tensor.shape)}; c_attn holds q, k and v of width {hidden_size} each")
            for part, rows in zip(("q", "k", "v"), tensor.split(hidden_size)):  # modeling_qwen.py: split(split_size)
                # a copy: three views of one storage would be written once by safetensors and refused
                renamed[f"language_model.model.layers.{layer[1]}.self_attn.{part}_proj.{kind}"] = rows.clone()
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"a Qwen-VL checkpoint with weights Loom's qwen-vl has no place for {unknown[:6]}")
    return renamed


def published_names(names: list[str]) -> list[str]:
    """Loom's names of the tower and the resampler as the published checkpoint spells them (for messages)."""
    spelled = []
    for name in names:
        if name.startswith("vision_tower."):
            name = "transformer.visual." + name.removeprefix("vision_tower.")
        elif name.startswith("connector."):
            rest = name.removeprefix("connector.")
            name = "transformer.visual." + (rest if rest == "proj" or rest.startswith("ln_post.") else "attn_pool." + rest)
        spelled.append(name)
    return spelled


def load_qwen_vl(path: str | Path, config: dict, published: dict[str, torch.Tensor],
                 device: str | torch.device = "cpu", attn_implementation: str | None = None):
    """A Loom qwen-vl model (fp32) holding `published`, the tensors of the Qwen-VL checkpoint in folder `path`
    whose config.json is `config`."""
    path = Path(path)
    preset, image_token_id, pad_token_id = preset_of(config, path / "config.json")
    state = loom_state_dict(published, preset.llm["num_hidden_layers"], preset.llm["hidden_size"])
    model = build_model(preset, preset.llm["vocab_size"], image_token_id, pad_token_id,
                        attn_implementation=attn_implementation or "sdpa", seed=None)
    # a tied head is the embeddings, whether or not the file repeats it
    assign_weights(model, state, str(path), spell=published_names)
    return model.to(device)
