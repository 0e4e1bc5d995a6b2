"""Every architecture from `loom pack` to its model: the packed shards, read by vlm.data, train a tiny model."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import vlm
from jobs.pack import run_pack
from vlm.data import PackedDataset
from vlm.builders import build_model

from test_pack_job import instruction, write_render


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack_to_model")
    rows = []
    for i in range(10):
        size = (64, 48) if i % 2 else (48, 64)  # Qwen2-VL sizes each image by its own pixels
        Image.new("RGB", size, ["red", "blue", "green"][i % 3]).save(root / f"{i}.png")
        row = instruction(i, "vqa", ["red", "blue circle", "green square"][i % 3])
        row["images"][0].update(path=str(root / f"{i}.png"), width=size[0], height=size[1])
        rows.append(row)
    write_render(root / "render", rows)
    return root


@pytest.mark.parametrize("name", vlm.presets())
def test_a_packed_batch_of_every_architecture_trains_its_tiny_model(name, rendered, tmp_path):
    out = tmp_path / "run"
    config = {"pack": {"preset": f"{name}-tiny", "input": str(rendered / "render"), "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 1024,
                       "outputs": {"instruct": {"datasets": ["mix"], "split": "train"}}}}
    run_pack(config, out, log=lambda *_: None)
    dataset = PackedDataset(out / "pack" / "instruct", batch_size=2, shuffle=False)
    manifest = dataset.manifest
    model = build_model(dataset.preset, vocab_size=400, image_token_id=manifest["image_token_id"],
                        pad_token_id=manifest["pad_token_id"])
    model.set_trainable(dataset.preset.groups)
    batch, _ = next(dataset.batches())
    out_ = model(**batch.model_inputs())
    assert torch.isfinite(out_.loss) and batch.num_tokens > 0
    out_.loss.backward()
    assert all(any(p.grad is not None for p in module.parameters()) for module in model.groups.values())
    if dataset.preset.encoder_decoder:
        assert batch.decoder_labels is not None and batch.labels.eq(-100).all()
    if dataset.preset.qformer_text:
        assert batch.qformer_input_ids.shape[0] == batch.pixel_values.shape[0]
    if dataset.preset.native_resolution:
        # 64x48 px is under Qwen2-VL's 56x56-pixel floor: scaled up to 80x64 (multiples of 8-px patch x 2)
        assert {tuple(g[1:]) for g in batch.image_grid_thw.tolist()} == {(8, 10), (10, 8)}
