"""`loom pack` with a user's own tokenizer folder, as real users bring one from a local path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from jobs.config import ConfigError
from jobs.pack import run_pack
from pipelines.manifest import StageRecord
from pipelines.render import render_record, write_instructions


@pytest.fixture()
def render_dir(tmp_path):
    records = [{"id": f"vqav2:train:{i}", "dataset": "vqav2", "task": "vqa", "split": "train", "lang": "en",
                "image": {"path": f"/data/{i}.jpg", "width": 64, "height": 64},
                "question": "What color is the circle?", "answer": ["red", "blue"][i % 2]} for i in range(40)]
    out = tmp_path / "run" / "render"
    write_instructions([render_record(r, seed=0) for r in records], out / "instructions" / "00.parquet")
    record = StageRecord("render", {"test": True})
    record.extra["files"] = ["instructions/00.parquet"]
    record.finish(out)
    return out


def save_tokenizer_without_pad(folder):
    """A byte-level BPE tokenizer folder with <s>, </s>, <image> but no <pad>, like many LLaMA tokenizers."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(["What color is the circle? red blue USER: ASSISTANT: chat"] * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))


def config(tokenizer_dir):
    return {"pack": {"preset": "llava-1.5-tiny", "tokenizer": {"path": str(tokenizer_dir)},
                     "outputs": {"instruct": {"datasets": ["vqav2"], "split": "train"}}}}


def test_a_tokenizer_without_pad_pads_with_end_of_sequence(render_dir, tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    run_pack(config(tmp_path / "tok"), render_dir.parent, log=lambda *_: None)
    manifest = json.loads((render_dir.parent / "pack" / "instruct" / "manifest.json").read_text())
    assert manifest["pad_token_id"] == manifest["eos_token_id"] == 1
    assert manifest["samples"] == 40


def test_changing_the_tokenizer_repacks(render_dir, tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    first = run_pack(config(tmp_path / "tok"), render_dir.parent, log=lambda *_: None)
    logs = []
    run_pack(config(tmp_path / "tok"), render_dir.parent, log=logs.append)
    assert any("skipped" in line for line in logs)
    file = tmp_path / "tok" / "tokenizer.json"
    file.write_text(file.read_text() + "\n")  # any edit to the file, even one that changes no token
    logs.clear()
    second = run_pack(config(tmp_path / "tok"), render_dir.parent, log=logs.append)
    assert not any("skipped" in line for line in logs) and second["inputs"] != first["inputs"]


def test_a_folder_without_tokenizer_json_is_refused(render_dir, tmp_path):
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        run_pack(config(tmp_path / "empty"), render_dir.parent)


def write_render(out, rows):
    write_instructions(rows, out / "instructions" / "00.parquet")
    record = StageRecord("render", {"rows": len(rows)})
    record.extra["files"] = ["instructions/00.parquet"]
    record.extra["datasets"] = {"00.parquet": {"adapter": "test", "split": "train", "records": len(rows), "languages": {"en": len(rows)}}}
    record.finish(out)
    return out


def instruction(i, task, answer, image=True):
    prompt = ("<image>\n" if image else "") + "Describe it."
    return {"id": f"{task}:{i}", "dataset": "mix", "task": task, "split": "train", "lang": "en", "template_id": "t",
            "brevity": "none", "images": [{"path": f"/data/{i}.jpg", "width": 64, "height": 64}] if image else [],
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "answers": None, "question_type": None}


def packed_rows(out, name="instruct"):
    import pyarrow.parquet as pq

    return [row for f in sorted((out / "pack" / name / "shards").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def pack_config(tokenizer_dir, **settings):
    return {"pack": {"preset": "llava-1.5-tiny", "tokenizer": {"path": str(tokenizer_dir)}, "seq_len": 512,
                     "outputs": {"instruct": {"datasets": ["mix"], "split": "train"}}, **settings}}


def test_interleave_same_task_packs_each_task_apart_as_one_document(tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    rows = [instruction(i, ["vqa", "captioning"][i % 2], "red blue") for i in range(30)]
    out = tmp_path / "run"
    write_render(out / "render", rows)
    run_pack(pack_config(tmp_path / "tok", mode="interleave_same_task"), out, log=lambda *_: None)
    packed = packed_rows(out)
    assert all(len(set(r["task"])) == 1 for r in packed) and any(len(r["task"]) > 1 for r in packed)
    assert all(r["segment_lengths"] == [len(r["input_ids"])] for r in packed)


def test_an_image_cap_and_the_too_long_rule_are_kept_with_reasons(tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    long_answer = " ".join(["red blue"] * 400)
    rows = [instruction(i, "vqa", "red") for i in range(20)]
    rows += [instruction(100, "chat", long_answer, image=False), instruction(101, "vqa", long_answer)]
    out = tmp_path / "run"
    write_render(out / "render", rows)
    manifest = run_pack(pack_config(tmp_path / "tok", max_images_per_sequence=2, too_long="split"), out,
                        log=lambda *_: None)
    packed = packed_rows(out)
    assert max(len(r["images"]) for r in packed) <= 2
    parts = [i for r in packed for i in r["ids"] if i.startswith("chat:100#part")]
    assert len(parts) >= 2  # the text-only conversation, cut into sequences
    assert manifest["dropped"] == {"too_long_with_images": 1}  # a sample with an image is never cut


@pytest.mark.parametrize("preset", ["blip2-opt", "blip2-flant5", "instructblip-flant5", "instructblip-vicuna", "qwen-vl",
                                    "qwen2-vl", "llava", "llava-1.5", "minigpt4", "minigpt-v2"])
def test_every_architecture_packs_in_its_chat_format_with_its_visual_token_count(preset, tmp_path):
    from templates.chat import get_chat_format
    from vlm.preset import get_preset

    rows = [instruction(i, "vqa", "red") for i in range(6)]
    rows[0]["images"][0].update(width=640, height=480)  # Qwen2-VL sizes each image by its own pixels
    out = tmp_path / "run"
    write_render(out / "render", rows)
    config = {"pack": {"preset": preset, "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 4096,
                       "outputs": {"instruct": {"datasets": ["mix"], "split": "train"}}}}
    run_pack(config, out, log=lambda *_: None)
    manifest = json.loads((out / "pack" / "instruct" / "manifest.json").read_text())
    packed = packed_rows(out)
    spec, chat = get_preset(preset), get_chat_format(get_preset(preset).chat_format)
    image_id = manifest["image_token_id"]
    per_sample = {}
    for row in packed:
        start = 0
        for sample_id, length in zip(row["ids"], row["segment_lengths"]):
            per_sample[sample_id] = row["input_ids"][start:start + length].count(image_id)
            start += length
    expected = {r["id"]: spec.visual_tokens for r in rows}
    if preset == "qwen2-vl":
        expected = {r["id"]: (476 // 14) * (644 // 14) // 4 if i == 0 else (56 // 14) * (56 // 14) // 4
                    for i, r in enumerate(rows)}  # 640x480 -> 644x476; 64x64 -> 56x56 (multiples of 28)
    assert per_sample == expected
    if chat.encoder_decoder:  # the answer is the decoder's target, one decoder segment per sample
        assert all(len(r["decoder_segment_lengths"]) == len(r["ids"]) for r in packed)
        assert all(t != -100 for r in packed for t in r["decoder_labels"]) and all(l == -100 for r in packed for l in r["labels"])
    else:
        assert all(r["decoder_labels"] == [] for r in packed)
        assert sum(t != -100 for r in packed for t in r["labels"]) > 0
    assert manifest["bos_token_id"] is None if not chat.bos else manifest["bos_token_id"] is not None


def test_packed_shards_read_in_hugging_face_datasets_and_ray_data(tmp_path):
    from datasets import load_dataset

    from jobs.ray_runtime import ray_session

    save_tokenizer_without_pad(tmp_path / "tok")
    out = tmp_path / "run"
    write_render(out / "render", [instruction(i, "vqa", "red blue") for i in range(25)])
    run_pack(pack_config(tmp_path / "tok", sequences_per_shard=2), out, log=lambda *_: None)
    shards = sorted(str(p) for p in (out / "pack" / "instruct" / "shards").glob("packed-*.parquet"))
    expected = packed_rows(out)
    assert len(shards) > 1
    rows = load_dataset("parquet", data_files=shards, split="train")
    assert rows["input_ids"] == [r["input_ids"] for r in expected] and rows["ids"] == [r["ids"] for r in expected]
    with ray_session(num_cpus=1) as ray:
        read = ray.data.read_parquet(shards).take_all()
    assert sorted(tuple(r["ids"]) for r in read) == sorted(tuple(r["ids"]) for r in expected)
    assert sum(len(r["segment_lengths"]) for r in read) == 25


def test_the_report_shows_lengths_before_packing_fill_after_and_each_tasks_share(tmp_path):
    from jobs.report import write_report

    save_tokenizer_without_pad(tmp_path / "tok")
    out = tmp_path / "run"
    rows = [instruction(i, "vqa", "red") for i in range(12)] + [instruction(i, "captioning", "red blue " * 20) for i in range(12, 16)]
    write_render(out / "render", rows)
    manifest = run_pack(pack_config(tmp_path / "tok"), out, log=lambda *_: None)
    figures = manifest["outputs"]["instruct"]["figures"]
    assert sum(figures["sample_length"].values()) == 16 and sum(figures["sequence_fill"].values()) == manifest["outputs"]["instruct"]["sequences"]
    assert {t: v["samples"] for t, v in figures["tasks"].items()} == {"captioning": 4, "vqa": 12}
    assert abs(sum(v["token_share"] for v in figures["tasks"].values()) - 1) < 1e-3
    page = Path(write_report(out)["html"]).read_text()
    assert "sample length before packing" in page and "sequences by fill after packing" in page and "token share" in page


def test_a_packed_row_from_loom_pack_gives_a_real_model_each_samples_own_logits(tmp_path):
    """Block mode isolates samples: a tiny LLaVA-1.5 reading a packed row of `loom pack`'s output gives each
    sample exactly the logits it gives that sample alone, unpacked."""
    import torch
    from PIL import Image

    from vlm.data import PackedDataset
    from vlm.builders import build_model

    for i, colour in enumerate(["red", "blue", "green", "yellow"] * 3):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{i}.png")
    rows = [instruction(i, "vqa", ["red", "blue circle", "green square"][i % 3]) for i in range(12)]
    for i, row in enumerate(rows):
        row["images"][0]["path"] = str(tmp_path / f"{i}.png")
    save_tokenizer_without_pad(tmp_path / "tok")
    out = tmp_path / "run"
    write_render(out / "render", rows)
    run_pack(pack_config(tmp_path / "tok"), out, log=lambda *_: None)
    dataset = PackedDataset(out / "pack" / "instruct", shuffle=False)
    manifest = dataset.manifest
    model = build_model("llava-1.5-tiny", vocab_size=400, image_token_id=manifest["image_token_id"],
                        pad_token_id=manifest["pad_token_id"]).eval()
    batch = dataset.collate([(0, 0)])
    lengths = [int(n) for n in dataset._shard(0).get(0, "segment_lengths")]
    assert len(lengths) > 1  # several samples share the row
    with torch.no_grad():
        packed = model(**batch.model_inputs()).logits[0]
        start, image = 0, 0
        for length in lengths:
            ids = batch.input_ids[:, start:start + length]
            images = int((ids == manifest["image_token_id"]).sum()) // model.visual_tokens
            alone = model(ids, pixel_values=batch.pixel_values[image:image + images]).logits[0]
            torch.testing.assert_close(packed[start:start + length], alone, atol=2e-5, rtol=1e-4)
            start, image = start + length, image + images


def test_windows_packed_by_ray_tasks_write_what_packing_here_writes(tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    rows = [instruction(i, ["vqa", "captioning"][i % 3 == 0], "red blue " * (i % 7)) for i in range(60)]
    outputs = {}
    for mode in ("never", "always"):
        out = tmp_path / mode
        write_render(out / "render", rows)
        manifest = run_pack(pack_config(tmp_path / "tok", window=25, ray=mode), out, log=lambda *_: None)
        outputs[mode] = (packed_rows(out), manifest["outputs"]["instruct"])
    (here, here_summary), (ray, ray_summary) = outputs["never"], outputs["always"]
    assert here == ray and here_summary == ray_summary
    assert here_summary["windows"] == 3 and here_summary["samples"] == 60
    windows = [{int(i.split(":")[1]) // 25 for i in row["ids"]} for row in here]
    assert all(len(w) == 1 for w in windows)  # no sequence spans two windows


def test_the_manifest_names_the_architecture_tokenizer_sequence_length_mode_and_fill(render_dir, tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    run_pack(config(tmp_path / "tok"), render_dir.parent, log=lambda *_: None)
    manifest = json.loads((render_dir.parent / "pack" / "instruct" / "manifest.json").read_text())
    assert (manifest["architecture"], manifest["seq_len"], manifest["mode"]) == ("llava-1.5", 2048, "block")
    assert manifest["tokenizer_hash"] and 0 < manifest["fill"] <= 1


def test_an_outputs_mixture_weights_draw_each_dataset_that_many_times_and_are_recorded(tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    rows = [{**instruction(i, "vqa", "red"), "dataset": ["vqav2", "coco_caption"][i % 2]} for i in range(200)]
    out = tmp_path / "run"
    write_render(out / "render", rows)
    outputs = {"instruct": {"datasets": ["vqav2", "coco_caption"], "weights": {"vqav2": 2, "coco_caption": 0.25}}}
    manifest = run_pack(pack_config(tmp_path / "tok", outputs=outputs), out, log=lambda *_: None)
    mixture = manifest["outputs"]["instruct"]["mixture"]
    assert mixture["vqav2"] == {"records": 100, "samples": 200}
    assert mixture["coco_caption"]["records"] == 100 and 10 <= mixture["coco_caption"]["samples"] <= 40
    packed = [i for r in packed_rows(out) for i in r["ids"]]
    assert len(packed) == 200 + mixture["coco_caption"]["samples"] == manifest["outputs"]["instruct"]["samples"]
    assert packed.count("vqa:0") == 2  # a record of weight 2 is in the output twice
    again = run_pack(pack_config(tmp_path / "tok", outputs=outputs, seq_len=1024), out, log=lambda *_: None)
    assert again["outputs"]["instruct"]["mixture"] == mixture  # the draw is seeded
    from jobs.report import write_report

    page = Path(write_report(out)["html"]).read_text()
    assert "mixture weights: records of each dataset against samples drawn" in page


@pytest.mark.parametrize("weights, wrong", [({"gqa": 1}, "not among its datasets"), ({"mix": -1}, "a number >= 0")])
def test_mixture_weights_of_other_datasets_or_below_zero_are_refused(weights, wrong, tmp_path):
    outputs = {"instruct": {"datasets": ["mix"], "weights": weights}}
    with pytest.raises(ConfigError, match=wrong):
        run_pack(pack_config(tmp_path / "tok", outputs=outputs), tmp_path, log=lambda *_: None)
