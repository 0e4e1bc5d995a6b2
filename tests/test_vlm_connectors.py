"""The small connectors: LLaVA's projectors, Qwen-VL's resampler, MiniGPT-v2's token concatenation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlm.connectors.projector import LinearProjector, MLPProjector
from vlm.connectors.resampler import QwenResampler, resize_pos_embed, sincos_pos_embed_2d
from vlm.connectors.token_concat import ConcatProjector


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------
# projector.py
# ---------------------------------------------------------------------------------------------

def test_linear_projector_maps_every_token_to_llm_width():
    projector = LinearProjector(48, 32)
    features = torch.randn(2, 9, 48)
    out = projector(features)
    assert out.shape == (2, 9, 32)
    torch.testing.assert_close(out, features @ projector.linear_1.weight.T + projector.linear_1.bias)


def test_linear_projector_loads_llava_v1_and_minigpt4_keys_by_renaming_only():
    # LLaVA v1 saves a bare nn.Linear as model.mm_projector; MiniGPT-4 saves llama_proj.
    original = nn.Linear(48, 32)
    features = torch.randn(2, 5, 48)
    for prefix in ("model.mm_projector.", "llama_proj."):
        checkpoint = {prefix + name: tensor for name, tensor in original.state_dict().items()}
        projector = LinearProjector(48, 32)
        projector.load_state_dict({k.replace(prefix, "linear_1."): v for k, v in checkpoint.items()}, strict=True)
        torch.testing.assert_close(projector(features), original(features))


def test_mlp_projector_loads_a_llava_hf_projector_state_dict_and_agrees():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14).to_dict(),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, vocab_size=64).to_dict(),
    )
    reference = LlavaMultiModalProjector(config)
    projector = MLPProjector(48, 32)
    projector.load_state_dict(reference.state_dict(), strict=True)  # same names, same shapes
    features = torch.randn(2, 7, 48)
    torch.testing.assert_close(projector(features), reference(features))


def test_mlp_projector_matches_llavas_sequential_with_renamed_keys_at_any_depth():
    # LLaVA's mlp3x_gelu: Sequential(Linear, GELU, Linear, GELU, Linear), keys 0, 2, 4.
    original = nn.Sequential(nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 32))
    renamed = {}
    for key, tensor in original.state_dict().items():
        index, name = key.split(".")
        renamed[f"linear_{int(index) // 2 + 1}.{name}"] = tensor
    projector = MLPProjector(48, 32, depth=3)
    projector.load_state_dict(renamed, strict=True)
    features = torch.randn(3, 4, 48)
    torch.testing.assert_close(projector(features), original(features))


def test_mlp_projector_is_linear_gelu_linear():
    projector = MLPProjector(48, 32)
    assert [name for name, _ in projector.named_children()] == ["linear_1", "act", "linear_2"]
    features = torch.randn(2, 3, 48)
    expected = F.linear(F.gelu(F.linear(features, projector.linear_1.weight, projector.linear_1.bias)),
                        projector.linear_2.weight, projector.linear_2.bias)
    torch.testing.assert_close(projector(features), expected)


def test_mlp_projector_rejects_depth_zero():
    with pytest.raises(ValueError, match="depth 0"):
        MLPProjector(48, 32, depth=0)


def test_projectors_pass_gradients_to_weights_and_features():
    for projector in (LinearProjector(48, 32), MLPProjector(48, 32)):
        features = torch.randn(2, 5, 48, requires_grad=True)
        projector(features).square().sum().backward()
        assert features.grad is not None and features.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())


# ---------------------------------------------------------------------------------------------
# resampler.py
# ---------------------------------------------------------------------------------------------

def tiny_resampler(**kwargs) -> QwenResampler:
    return QwenResampler(**{"embed_dim": 32, "kv_dim": 48, "num_queries": 16, "num_heads": 2, **kwargs})


def capture_attention_inputs(resampler: QwenResampler, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(query, key, value) as the cross-attention layer receives them in a real forward pass."""
    seen = []
    handle = resampler.attn.register_forward_pre_hook(lambda module, args: seen.append(args[:3]))
    try:
        resampler(features)
    finally:
        handle.remove()
    return seen[0]


def test_resampler_compresses_any_patch_count_to_the_query_count():
    resampler = tiny_resampler()
    for num_patches in (16, 64, 9):
        assert resampler(torch.randn(3, num_patches, 48)).shape == (3, 16, 32)


def test_resampler_default_is_qwen_vl_256_queries_and_heads_of_128():
    resampler = QwenResampler(256, 48)
    assert resampler.num_queries == 256 and resampler.attn.num_heads == 2  # 256 // 128
    assert resampler.pos_embed.shape == (256, 256) and resampler.query.shape == (256, 256)
    # Qwen-VL's 448 px / patch 14 image: 32 x 32 = 1024 patches in, 256 tokens out.
    assert resampler(torch.randn(1, 1024, 48)).shape == (1, 256, 256)


def test_resampler_has_qwen_vl_sizes_and_checkpoint_names():
    with torch.device("meta"):
        resampler = QwenResampler(4096, 1664)  # Qwen-VL: output_dim 4096, ViT-bigG width 1664
    shapes = {name: tuple(t.shape) for name, t in resampler.state_dict().items()}
    assert shapes == {
        "pos_embed": (256, 4096), "query": (256, 4096), "proj": (4096, 4096),
        "kv_proj.weight": (4096, 1664),  # no bias, as in visual.py
        "attn.in_proj_weight": (3 * 4096, 4096), "attn.in_proj_bias": (3 * 4096,),
        "attn.out_proj.weight": (4096, 4096), "attn.out_proj.bias": (4096,),
        "ln_q.weight": (4096,), "ln_q.bias": (4096,), "ln_kv.weight": (4096,), "ln_kv.bias": (4096,),
        "ln_post.weight": (4096,), "ln_post.bias": (4096,),
    }
    assert resampler.attn.num_heads == 32
    assert resampler.ln_q.eps == resampler.ln_kv.eps == resampler.ln_post.eps == 1e-6


def test_resampler_skips_kv_proj_when_widths_agree():
    resampler = tiny_resampler(kv_dim=32)
    assert isinstance(resampler.kv_proj, nn.Identity)
    assert resampler(torch.randn(2, 16, 32)).shape == (2, 16, 32)


def test_resampler_needs_num_heads_when_narrower_than_one_qwen_head():
    with pytest.raises(ValueError, match="pass num_heads"):
        QwenResampler(64, 48, num_queries=16)


def test_resampler_rejects_non_square_query_count():
    with pytest.raises(ValueError, match="num_queries 15"):
        QwenResampler(32, 48, num_queries=15, num_heads=2)


def test_sincos_table_matches_the_formula_entry_by_entry():
    dim, grid = 16, 4
    table = sincos_pos_embed_2d(dim, grid)
    assert table.shape == (16, 16) and table.dtype == torch.float32
    quarter = dim // 4  # each of sin(col), cos(col), sin(row), cos(row) takes a quarter of the channels

    def expected(token: int, channel: int) -> float:
        row, column = divmod(token, grid)
        part, i = divmod(channel, quarter)
        omega = 1.0 / 10000 ** (i / quarter)
        return [math.sin(column * omega), math.cos(column * omega),
                math.sin(row * omega), math.cos(row * omega)][part]

    for token, channel in [(0, 0), (0, 4), (5, 1), (6, 3), (6, 6), (7, 9), (9, 13), (14, 15), (15, 11), (11, 2)]:
        assert table[token, channel].item() == pytest.approx(expected(token, channel), abs=1e-6)


def test_sincos_table_codes_column_first_then_row():
    table = sincos_pos_embed_2d(16, 4).reshape(4, 4, 16)  # (row, column, D)
    # First half depends on the column only, second half on the row only (MAE's meshgrid order).
    torch.testing.assert_close(table[:, :, :8], table[:1, :, :8].expand(4, 4, 8))
    torch.testing.assert_close(table[:, :, 8:], table[:, :1, 8:].expand(4, 4, 8))
    assert not torch.allclose(table[0, 1, :8], table[0, 0, :8])


def test_resampler_stores_the_sincos_table_as_a_fixed_buffer():
    resampler = tiny_resampler()
    torch.testing.assert_close(resampler.pos_embed, sincos_pos_embed_2d(32, 4))
    assert "pos_embed" not in dict(resampler.named_parameters())
    resampler.requires_grad_(True)  # what Loom does to unfreeze a slot
    assert not resampler.pos_embed.requires_grad


def test_keys_carry_positions_and_values_do_not():
    resampler = tiny_resampler()
    features = torch.randn(2, 64, 48)  # an 8 x 8 grid: the keys' table is interpolated
    query, key, value = capture_attention_inputs(resampler, features)
    content = resampler.ln_kv(resampler.kv_proj(features))
    torch.testing.assert_close(value, content)
    torch.testing.assert_close(key, content + resize_pos_embed(resampler.pos_embed, 64))
    expected_query = resampler.ln_q(resampler.query) + resampler.pos_embed  # the stored 4 x 4 table
    torch.testing.assert_close(query, expected_query.expand(2, -1, -1))


def test_changing_positions_changes_attention_weights_only():
    resampler = tiny_resampler()
    features = torch.randn(2, 16, 48)
    before = resampler(features)
    _, _, value_before = capture_attention_inputs(resampler, features)
    resampler.pos_embed.copy_(torch.randn_like(resampler.pos_embed))
    _, _, value_after = capture_attention_inputs(resampler, features)
    torch.testing.assert_close(value_after, value_before)  # what the queries read is untouched
    assert not torch.allclose(resampler(features), before)  # where they look has moved

    # With query/key projections zeroed every query attends uniformly: positions then have nothing
    # to act on, so the output cannot depend on them (it would if values carried positions).
    with torch.no_grad():
        resampler.attn.in_proj_weight[:64].zero_()
        resampler.attn.in_proj_bias[:64].zero_()
    uniform = resampler(features)
    resampler.pos_embed.copy_(torch.randn_like(resampler.pos_embed))
    torch.testing.assert_close(resampler(features), uniform)
    mean_value = resampler.attn.out_proj(F.linear(value_before, resampler.attn.in_proj_weight[64:],
                                                  resampler.attn.in_proj_bias[64:]).mean(dim=1, keepdim=True))
    torch.testing.assert_close(uniform, (resampler.ln_post(mean_value) @ resampler.proj).expand_as(uniform))


def test_key_positions_are_the_table_resized_bicubically_on_the_image_grid():
    table = sincos_pos_embed_2d(32, 4)
    assert resize_pos_embed(table, 16) is table  # same grid: used as stored
    resized = resize_pos_embed(table, 36)  # 4 x 4 -> 6 x 6
    direct = F.interpolate(table.reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(6, 6), mode="bicubic",
                           align_corners=False).permute(0, 2, 3, 1).reshape(36, 32)
    torch.testing.assert_close(resized, direct)
    # The table is a (row, column) grid: the column-only half stays constant down each column.
    grid = resized.reshape(6, 6, 32)
    torch.testing.assert_close(grid[:, :, :16], grid[:1, :, :16].expand(6, 6, 16))
    torch.testing.assert_close(grid[:, :, 16:], grid[:, :1, 16:].expand(6, 6, 16))


def test_resize_keeps_a_constant_table_constant_and_dtype():
    table = torch.full((16, 8), 0.5, dtype=torch.bfloat16)
    resized = resize_pos_embed(table, 49)
    assert resized.shape == (49, 8) and resized.dtype == torch.bfloat16
    torch.testing.assert_close(resized, torch.full((49, 8), 0.5, dtype=torch.bfloat16))


def test_resampler_rejects_features_that_are_not_a_square_grid():
    with pytest.raises(ValueError, match="17 tokens, not a square grid"):
        tiny_resampler()(torch.randn(1, 17, 48))


def test_resampler_gradients_reach_every_weight_and_the_features():
    resampler = tiny_resampler()
    features = torch.randn(2, 64, 48, requires_grad=True)
    resampler(features).square().sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for name, parameter in resampler.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_resampler_images_do_not_mix_across_the_batch():
    resampler = tiny_resampler()
    features = torch.randn(3, 16, 48)
    together = resampler(features)
    alone = torch.cat([resampler(features[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone)


# ---------------------------------------------------------------------------------------------
# token_concat.py
# ---------------------------------------------------------------------------------------------

def test_concat_projector_turns_1024_patches_into_256_tokens():
    projector = ConcatProjector(32, 48)
    assert projector.linear_1.in_features == 4 * 32
    assert projector(torch.randn(2, 1024, 32)).shape == (2, 256, 48)


def test_concat_order_is_four_consecutive_tokens_first_token_first():
    projector = ConcatProjector(3, 12)
    with torch.no_grad():  # an identity projection exposes the concatenated tokens themselves
        projector.linear_1.weight.copy_(torch.eye(12))
        projector.linear_1.bias.zero_()
    features = torch.randn(2, 16, 3)
    out = projector(features)
    for k in range(4):
        expected = torch.cat([features[:, 4 * k + j] for j in range(4)], dim=-1)  # [x_4k | ... | x_4k+3]
        torch.testing.assert_close(out[:, k], expected)
    # The reference writes it as image_embeds.view(bs, pn / 4, hs * 4).
    torch.testing.assert_close(out, features.view(2, 4, 12))


def test_each_output_token_depends_exactly_on_its_four_input_tokens():
    projector = ConcatProjector(8, 16)
    features = torch.randn(1, 32, 8)
    jacobian = torch.autograd.functional.jacobian(projector, features)  # (1, 8, 16, 1, 32, 8)
    depends = jacobian.abs().sum(dim=(0, 2, 3, 5)) > 0  # (8 outputs, 32 inputs)
    expected = torch.zeros(8, 32, dtype=torch.bool)
    for k in range(8):
        expected[k, 4 * k:4 * k + 4] = True
    assert torch.equal(depends, expected)


def test_concat_projector_rejects_a_token_count_not_divisible_by_the_group():
    with pytest.raises(ValueError, match="1025 tokens, not a multiple of group 4"):
        ConcatProjector(8, 16)(torch.randn(1, 1025, 8))  # CLS token left in


def test_concat_projector_other_group_sizes():
    projector = ConcatProjector(8, 16, group=2)
    assert projector(torch.randn(3, 10, 8)).shape == (3, 5, 16)


def test_concat_projector_loads_minigpt_v2_llama_proj():
    original = nn.Linear(4 * 8, 16)  # llama_proj: num_features * 4 -> llama width
    projector = ConcatProjector(8, 16)
    projector.load_state_dict({f"linear_1.{k}": v for k, v in original.state_dict().items()}, strict=True)
    features = torch.randn(2, 16, 8)
    torch.testing.assert_close(projector(features), original(features.view(2, 4, 32)))


def test_concat_projector_gradients_flow():
    projector = ConcatProjector(8, 16)
    features = torch.randn(2, 16, 8, requires_grad=True)
    projector(features).sum().backward()
    assert features.grad.abs().sum() > 0
    assert projector.linear_1.weight.grad.abs().sum() > 0 and projector.linear_1.bias.grad.abs().sum() > 0
