"""Qwen-VL as published: its own ViT (no CLS token) and its checkpoint layout (`transformer.*`) loaded into Loom,
checked against a reference forward written from Qwen-VL's modeling code (tests/qwen_vl_reference.py)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import vlm
from qwen_vl_reference import qwen_vl_logits
from vlm.preset import get_preset

# A tiny Qwen-VL with the published config.json's keys: the shapes shrink, everything else is Qwen-VL's
# (mlp_ratio 4.9231, so int(32 * 4.9231) = 157; 256 queries; 256 positions resized to a 4 x 4 grid).
IMAGE_START = 250  # <img>; </img> is 251, <imgpad> 252
CONFIG = {
    "architectures": ["QWenLMHeadModel"], "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                                                       "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    "model_type": "qwen", "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0, "bf16": False, "fp16": False, "fp32": True,
    "hidden_size": 128, "intermediate_size": 512, "kv_channels": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-6, "max_position_embeddings": 8192, "no_bias": True,
    "rotary_emb_base": 10000, "rotary_pct": 1.0, "scale_attn_weights": True, "seq_length": 2048,
    "tie_word_embeddings": False, "tokenizer_type": "QWenTokenizer", "use_cache": True, "use_dynamic_ntk": True,
    "use_flash_attn": False, "use_logn_attn": True, "vocab_size": 256,
    "visual": {"heads": 4, "image_size": 32, "image_start_id": IMAGE_START, "layers": 2, "mlp_ratio": 4.9231,
               "output_dim": 128, "patch_size": 8, "width": 32},
}


def published_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under Qwen-VL's own names and shapes (visual.py, modeling_qwen.py)."""
    generator = torch.Generator().manual_seed(seed)
    v, hidden = config["visual"], config["hidden_size"]
    width, mlp, out = v["width"], int(v["width"] * v["mlp_ratio"]), v["output_dim"]
    shapes = {"transformer.visual.conv1.weight": (width, 3, v["patch_size"], v["patch_size"]),
              "transformer.visual.positional_embedding": (256, width),
              "transformer.visual.ln_pre.weight": (width,), "transformer.visual.ln_pre.bias": (width,),
              "transformer.visual.attn_pool.query": (256, out), "transformer.visual.attn_pool.pos_embed": (256, out),
              "transformer.visual.attn_pool.kv_proj.weight": (out, width),
              "transformer.visual.attn_pool.attn.in_proj_weight": (3 * out, out),
              "transformer.visual.attn_pool.attn.in_proj_bias": (3 * out,),
              "transformer.visual.attn_pool.attn.out_proj.weight": (out, out),
              "transformer.visual.attn_pool.attn.out_proj.bias": (out,),
              "transformer.visual.proj": (out, out),
              "transformer.wte.weight": (config["vocab_size"], hidden), "transformer.ln_f.weight": (hidden,),
              "lm_head.weight": (config["vocab_size"], hidden)}
    for norm in ("ln_q", "ln_kv"):
        shapes.update({f"transformer.visual.attn_pool.{norm}.weight": (out,), f"transformer.visual.attn_pool.{norm}.bias": (out,)})
    shapes.update({"transformer.visual.ln_post.weight": (out,), "transformer.visual.ln_post.bias": (out,)})
    for i in range(v["layers"]):
        block = f"transformer.visual.transformer.resblocks.{i}."
        shapes.update({block + "ln_1.weight": (width,), block + "ln_1.bias": (width,), block + "ln_2.weight": (width,),
                       block + "ln_2.bias": (width,), block + "attn.in_proj.weight": (3 * width, width),
                       block + "attn.in_proj.bias": (3 * width,), block + "attn.out_proj.weight": (width, width),
                       block + "attn.out_proj.bias": (width,), block + "mlp.c_fc.weight": (mlp, width),
                       block + "mlp.c_fc.bias": (mlp,), block + "mlp.c_proj.weight": (width, mlp),
                       block + "mlp.c_proj.bias": (width,)})
    ff = config["intermediate_size"] // 2
    for i in range(config["num_hidden_layers"]):
        layer = f"transformer.h.{i}."
        shapes.update({layer + "ln_1.weight": (hidden,), layer + "ln_2.weight": (hidden,),
                       layer + "attn.c_attn.weight": (3 * hidden, hidden), layer + "attn.c_attn.bias": (3 * hidden,),
                       layer + "attn.c_proj.weight": (hidden, hidden), layer + "mlp.w1.weight": (ff, hidden),
                       layer + "mlp.w2.weight": (ff, hidden), layer + "mlp.c_proj.weight": (hidden, ff)})
    state = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        is_norm_weight = name.endswith(".weight") and any(f"{n}.weight" in name for n in ("ln_1", "ln_2", "ln_pre", "ln_q",
                                                                                           "ln_kv", "ln_post", "ln_f"))
        state[name] = 1 + 0.1 * noise if is_norm_weight else (0.5 if name.endswith("pos_embed") else 0.05) * noise
    return state


def write_published(folder, config: dict, state: dict, weights: str = "safetensors"):
    """A folder as huggingface.co/Qwen/Qwen-VL lays it out: config.json, generation_config.json and the
    weights in two shards with their index (or pytorch_model.bin)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"chat_format": "raw", "eos_token_id": 0, "pad_token_id": 0}))
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, folder / file)
    index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def prompts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Qwen-VL's input_ids, Loom's input_ids, pixels): two rows with one picture each, at different offsets.
    Qwen-VL's tokenizer writes the path's bytes and <imgpad> between <img> and </img>; Loom writes <imgpad>."""
    generator = torch.Generator().manual_seed(seed)
    path = list(b"shapes/0001.png")
    qwen, loom = [], []
    for before in (3, 9):
        head = torch.randint(0, 200, (before,), generator=generator).tolist()
        tail = torch.randint(0, 200, (14 - before,), generator=generator).tolist()
        qwen.append(head + [IMAGE_START] + path + [IMAGE_START + 2] * (256 - len(path)) + [IMAGE_START + 1] + tail)
        loom.append(head + [IMAGE_START] + [IMAGE_START + 2] * 256 + [IMAGE_START + 1] + tail)
    return torch.tensor(qwen), torch.tensor(loom), torch.randn(2, 3, 32, 32, generator=generator)


def loom_logits(model, input_ids, pixels) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids, pixel_values=pixels).logits


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    state = published_state_dict(CONFIG)
    folder = write_published(tmp_path_factory.mktemp("qwen-vl") / "Qwen-VL", CONFIG, state)
    return folder, state


def test_qwen_vls_tower_gives_one_feature_per_patch_and_has_no_class_token():
    model = vlm.build("qwen-vl", size="tiny", vocab_size=256, image_token_id=5)
    features = model.vision_tower(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, (32 // 8) ** 2, 32)
    names = [name for name, _ in model.vision_tower.named_parameters()]
    assert not any("class" in name or "cls" in name for name in names)
    assert model.vision_tower.positional_embedding.shape == (256, 32)  # visual.py's 256, resized to the grid


def test_a_published_qwen_vl_folder_gives_the_logits_of_qwen_vls_own_forward(published):
    folder, state = published
    qwen_ids, loom_ids, pixels = prompts()
    with torch.no_grad():
        expected = qwen_vl_logits(state, CONFIG, qwen_ids, pixels)
    model = vlm.from_pretrained(folder).eval()
    assert model.preset.architecture == "qwen-vl" and model.image_token_id == IMAGE_START + 2
    assert (loom_logits(model, loom_ids, pixels) - expected).abs().max().item() <= 1e-5


def test_a_loaded_qwen_vl_round_trips_through_looms_format(published, tmp_path):
    folder, _ = published
    model = vlm.from_pretrained(folder).eval()
    model.save_pretrained(tmp_path / "loom")
    again = vlm.from_pretrained(tmp_path / "loom").eval()
    _, loom_ids, pixels = prompts(seed=1)
    assert again.preset == model.preset
    assert torch.equal(loom_logits(again, loom_ids, pixels), loom_logits(model, loom_ids, pixels))


def test_pytorch_model_bin_loads_the_same_weights_as_safetensors(published, tmp_path):
    folder, state = published
    from_bin = vlm.from_pretrained(write_published(tmp_path / "bin", CONFIG, state, weights="bin"))
    from_safetensors = vlm.from_pretrained(folder)
    ours = from_safetensors.state_dict()
    assert all(torch.equal(tensor, ours[name]) for name, tensor in from_bin.state_dict().items())


def test_a_qwen_vl_config_loom_cannot_run_is_refused_naming_the_key(tmp_path):
    config = dict(CONFIG, rotary_pct=0.5)
    write_published(tmp_path, config, published_state_dict(CONFIG))
    with pytest.raises(ValueError, match=r"config.json: rotary_pct: 0.5; Loom's Qwen LLM rotates every channel"):
        vlm.from_pretrained(tmp_path)


def test_a_published_tensor_loom_has_no_place_for_is_named(tmp_path):
    state = dict(published_state_dict(CONFIG), **{"transformer.visual.class_embedding": torch.zeros(32)})
    write_published(tmp_path, CONFIG, state)
    with pytest.raises(ValueError, match=r"no place for \['transformer.visual.class_embedding'\]"):
        vlm.from_pretrained(tmp_path)


def test_the_published_preset_has_qwen_vls_vit_shape():
    preset = get_preset("qwen-vl")
    assert preset.vision_kind == "qwen_vl" and not preset.keep_cls
    assert preset.vision == dict(hidden_size=1664, intermediate_size=int(1664 * 4.9231), num_hidden_layers=48,
                                 num_attention_heads=16, image_size=448, patch_size=14)


def test_train_init_vision_starts_the_tower_from_a_published_qwen_vl_folder(tmp_path):
    from vlm.checkpoint import init_from_pretrained

    model = vlm.build("qwen-vl", size="tiny", vocab_size=256, image_token_id=5)
    tower = model.preset.vision  # the tiny tower's shape, written as Qwen-VL's config.json spells it
    config = dict(CONFIG, visual=dict(CONFIG["visual"], width=tower["hidden_size"], heads=tower["num_attention_heads"],
                                      layers=tower["num_hidden_layers"], patch_size=tower["patch_size"],
                                      mlp_ratio=tower["intermediate_size"] / tower["hidden_size"]))
    state = published_state_dict(config)
    init_from_pretrained(model, vision=write_published(tmp_path, config, state), log=lambda *_: None)
    ours = model.vision_tower.state_dict()
    assert all(torch.equal(tensor, state["transformer.visual." + name]) for name, tensor in ours.items())
