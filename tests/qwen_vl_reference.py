"""A reference forward of Qwen-VL written from its published modeling code, in plain torch, for tests.

Followed step by step from the two files the checkpoint on huggingface.co/Qwen/Qwen-VL carries, in their
own tensor layouts (sequence-first where they are), on a state dict with their parameter names:
- visual.py: VisionTransformer.forward (conv1, get_abs_pos, ln_pre, TransformerBlock of VisualAttentionBlocks
  with VisualAttention's per-head fused in_proj, attn_pool = Resampler, ln_post, @ proj);
- modeling_qwen.py: QWenModel.forward (wte, the image features written between <img> and </img>, the rotary
  cache, the causal mask of _prepare_decoder_attention_mask, QWenBlock = RMSNorm, QWenAttention with c_attn
  split into q, k, v and log-n scaling, QWenMLP), ln_f, then QWenLMHeadModel's lm_head.
Nothing here comes from Loom: it is what Loom's model is checked against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def get_abs_pos(abs_pos: torch.Tensor, tgt_size: int) -> torch.Tensor:
    """visual.py's get_abs_pos: the square table bicubically resized to sqrt(tgt_size) a side, in float32."""
    src_size, tgt = int(math.sqrt(abs_pos.size(0))), int(math.sqrt(tgt_size))
    if src_size == tgt:
        return abs_pos
    grid = abs_pos.float().reshape(1, src_size, src_size, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(0, 2).to(abs_pos.dtype)


def layer_norm(x, state, name, eps=1e-6):  # visual.py: partial(nn.LayerNorm, eps=1e-6) everywhere
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps)


def visual_attention(x, state, name, heads):
    """VisualAttention.forward on x [sq, b, h]: in_proj viewed [sq, b, np, 3 * hn] and split per head."""
    sq, b, width = x.shape
    hn = width // heads
    mixed = F.linear(x, state[name + ".in_proj.weight"], state[name + ".in_proj.bias"]).view(sq, b, heads, 3 * hn)
    query, key, value = mixed.split(hn, dim=-1)
    query = query.reshape(sq, b * heads, hn).transpose(0, 1)
    key = key.reshape(sq, b * heads, hn).transpose(0, 1)
    probs = torch.bmm(query / math.sqrt(hn), key.transpose(-2, -1)).softmax(dim=-1)
    value = value.reshape(sq, b * heads, hn).transpose(0, 1)
    context = torch.bmm(probs, value).view(b, heads, sq, hn).permute(2, 0, 1, 3).reshape(sq, b, width)
    return F.linear(context, state[name + ".out_proj.weight"], state[name + ".out_proj.bias"])


def multihead_attention(query, key, value, state, name, heads):
    """nn.MultiheadAttention (the Resampler's attn) on [L, N, E]: in_proj_weight's rows are [Wq; Wk; Wv]."""
    w_q, w_k, w_v = state[name + ".in_proj_weight"].chunk(3)
    b_q, b_k, b_v = state[name + ".in_proj_bias"].chunk(3)
    lq, n, e = query.shape
    hd = e // heads

    def heads_first(t):  # [L, N, E] -> [N * heads, L, hd]
        return t.reshape(t.shape[0], n * heads, hd).transpose(0, 1)

    q, k, v = heads_first(F.linear(query, w_q, b_q)), heads_first(F.linear(key, w_k, b_k)), heads_first(F.linear(value, w_v, b_v))
    probs = torch.bmm(q / math.sqrt(hd), k.transpose(-2, -1)).softmax(dim=-1)
    context = torch.bmm(probs, v).transpose(0, 1).reshape(lq, n, e)
    return F.linear(context, state[name + ".out_proj.weight"], state[name + ".out_proj.bias"])


def visual(state: dict, config: dict, images: torch.Tensor) -> torch.Tensor:
    """VisionTransformer.forward: images (N, 3, H, W) -> (N, 256, output_dim)."""
    v, p = config["visual"], "transformer.visual."
    x = F.conv2d(images, state[p + "conv1.weight"], stride=v["patch_size"])  # [*, width, grid, grid]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [*, grid ** 2, width]
    x = x + get_abs_pos(state[p + "positional_embedding"], x.size(1))
    x = layer_norm(x, state, p + "ln_pre")
    x = x.permute(1, 0, 2)  # NLD -> LND
    for i in range(v["layers"]):
        block = f"{p}transformer.resblocks.{i}"
        x = x + visual_attention(layer_norm(x, state, block + ".ln_1"), state, block + ".attn", v["heads"])
        h = layer_norm(x, state, block + ".ln_2")
        h = F.gelu(F.linear(h, state[block + ".mlp.c_fc.weight"], state[block + ".mlp.c_fc.bias"]))
        x = x + F.linear(h, state[block + ".mlp.c_proj.weight"], state[block + ".mlp.c_proj.bias"])
    x = x.permute(1, 0, 2)  # LND -> NLD

    # attn_pool: Resampler.forward
    pool = p + "attn_pool."
    pos_embed = get_abs_pos(state[pool + "pos_embed"], x.size(1))
    if pool + "kv_proj.weight" in state:  # nn.Identity when kv_dim == embed_dim
        x = F.linear(x, state[pool + "kv_proj.weight"])
    x = layer_norm(x, state, pool + "ln_kv").permute(1, 0, 2)  # [L, N, D]
    n = x.shape[1]
    q = layer_norm(state[pool + "query"], state, pool + "ln_q")
    query = q.unsqueeze(1).repeat(1, n, 1) + state[pool + "pos_embed"].unsqueeze(1)  # _repeat(q, N) + pos_embed
    out = multihead_attention(query, x + pos_embed.unsqueeze(1), x, state, pool + "attn", v["output_dim"] // 128)
    x = out.permute(1, 0, 2)  # [N, 256, D]

    x = layer_norm(x, state, p + "ln_post")
    return x @ state[p + "proj"]


def rms_norm(x, weight, eps):  # modeling_qwen.py RMSNorm
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rotate_half(x):  # _rotate_half: "... (j d) -> ... j d", j=2; cat(-x2, x1)
    x1, x2 = x.reshape(*x.shape[:-1], 2, x.shape[-1] // 2).unbind(dim=-2)
    return torch.cat((-x2, x1), dim=-1)


def qwen_vl_logits(state: dict, config: dict, input_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """QWenLMHeadModel.forward's logits (eval, no cache) for input_ids (B, L) holding one <img>...</img>
    span per image, in order."""
    start = config["visual"]["image_start_id"]
    bos_pos, eos_pos = torch.where(input_ids == start), torch.where(input_ids == start + 1)
    img_pos = torch.stack((bos_pos[0], bos_pos[1], eos_pos[1]), dim=1)
    features = visual(state, config, images)

    hidden_size, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim, eps, seq_length = hidden_size // heads, config["layer_norm_epsilon"], config["seq_length"]
    batch, length = input_ids.shape
    hidden = F.embedding(input_ids, state["transformer.wte.weight"]).clone()
    for idx, (i, a, b) in enumerate(img_pos.tolist()):
        hidden[i, a + 1:b] = features[idx]

    # RotaryEmbedding with dynamic NTK: ntk_alpha 1 up to seq_length tokens
    ntk_alpha = max(2 ** math.ceil(math.log(length / seq_length, 2) + 1) - 1, 1)
    base = config["rotary_emb_base"] * ntk_alpha ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(length).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]  # "n d -> 1 n 1 d"
    cos, sin = emb.cos(), emb.sin()
    # log-n attention scaling: 1 up to seq_length
    logn = torch.tensor([math.log(i, seq_length) if i > seq_length else 1 for i in range(1, length + 1)])[None, :, None, None]
    mask = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)  # _make_causal_mask

    for layer in range(config["num_hidden_layers"]):
        h = f"transformer.h.{layer}."
        x = rms_norm(hidden, state[h + "ln_1.weight"], eps)
        mixed = F.linear(x, state[h + "attn.c_attn.weight"], state[h + "attn.c_attn.bias"])
        query, key, value = (t.view(batch, length, heads, head_dim) for t in mixed.split(hidden_size, dim=2))
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        query = query * logn.expand_as(query)
        query, key, value = (t.permute(0, 2, 1, 3) for t in (query, key, value))
        weights = torch.matmul(query, key.transpose(-1, -2)) / value.size(-1) ** 0.5 + mask
        context = torch.matmul(weights.softmax(dim=-1), value).transpose(1, 2).reshape(batch, length, hidden_size)
        hidden = hidden + F.linear(context, state[h + "attn.c_proj.weight"])
        x = rms_norm(hidden, state[h + "ln_2.weight"], eps)
        a1, a2 = F.linear(x, state[h + "mlp.w1.weight"]), F.linear(x, state[h + "mlp.w2.weight"])
        hidden = hidden + F.linear(a1 * F.silu(a2), state[h + "mlp.c_proj.weight"])
    hidden = rms_norm(hidden, state["transformer.ln_f.weight"], eps)
    return F.linear(hidden, state["lm_head.weight"])
