"""Packed shards → batches and image references → pixels (vlm.data, vlm.images).

Also home of `write_packed_corpus`, a small but real pack directory (trained
word-level tokenizer, drawn images in a webdataset tar and as files, parquet
shards of packed rows) that the model and trainer tests build on.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from vlm.data import PackedDataset
from vlm.images import ImageProcessor, expand_to_square, load_image
from vlm.preset import get_preset

PRESET = get_preset("llava-1.5-tiny")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")
SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]


def vqa_prompt(question: str) -> str:
    """A llava_v1-style turn with the image before the question."""
    return f"<s> USER: <image>\n{question} ASSISTANT:"


def draw_shape(colour: str, shape: str, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (250, 250, 250))
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return image


def make_tokenizer(directory: Path):
    """A word-level tokenizer over the corpus's words, saved as the pack stage saves its own."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = [
        "USER: what colour is the shape? what shape is it? describe the image. ASSISTANT:",
        " ".join(COLOURS) + " " + " ".join(SHAPES) + " a an the on white background of",
    ]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens=["<image>"],
    )
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def make_samples(n: int, seed: int) -> list[dict]:
    """Questions about drawn shapes; every fifth is text-only (no image)."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if i % 5 == 4:
            samples.append({"id": f"t{i}", "task": "text", "image": None,
                            "prompt": "<s> USER: what colour is red? ASSISTANT:", "answer": "red"})
            continue
        ask_colour = i % 2 == 0
        samples.append({
            "id": f"s{i}", "task": "vqa", "colour": colour, "shape": shape,
            "size": (rng.choice([48, 64, 80]), rng.choice([40, 64, 72])),  # mostly not square: exercises padding
            "prompt": vqa_prompt("what colour is the shape?" if ask_colour else "what shape is it?"),
            "answer": colour if ask_colour else shape,
        })
    return samples


def tokenize_sample(tokenizer, sample: dict, image_token_id: int) -> tuple[list[int], list[int]]:
    """input_ids with the image expanded, and labels supervising only the answer and </s>."""
    prompt = tokenizer(sample["prompt"], add_special_tokens=False)["input_ids"]
    answer = tokenizer(f" {sample['answer']}</s>", add_special_tokens=False)["input_ids"]
    expanded = []
    for token in prompt:
        expanded.extend([token] * PRESET.visual_tokens if token == image_token_id else [token])
    return expanded + answer, [-100] * len(expanded) + answer


def write_packed_corpus(root: Path, n_samples: int = 20, seq_len: int = 256, rows_per_shard: int = 3,
                        seed: int = 0, samples: list[dict] | None = None) -> tuple[Path, list[dict]]:
    """A pack directory as the pack stage writes it, and the samples inside it (with image refs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pack_dir = root / "pack"
    (pack_dir / "shards").mkdir(parents=True)
    tokenizer = make_tokenizer(pack_dir / "tokenizer")
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    samples = samples if samples is not None else make_samples(n_samples, seed)

    # Half the images go into a webdataset shard, half are loose files: both reference kinds.
    images_dir = root / "images"
    images_dir.mkdir()
    tar_path = root / "pairs-00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, sample in enumerate(samples):
            if sample.get("colour") is None:
                continue
            image = draw_shape(sample["colour"], sample["shape"], sample["size"])
            if i % 2 == 0:
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=95)
                info = tarfile.TarInfo(f"{sample['id']}.jpg")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
                sample["image"] = {"shard": str(tar_path), "key": sample["id"], "path": None, "url": None,
                                   "width": image.width, "height": image.height}
            else:
                path = images_dir / f"{sample['id']}.png"
                image.save(path)
                sample["image"] = {"shard": None, "key": None, "path": str(path), "url": None,
                                   "width": image.width, "height": image.height}

    # Greedy next-fit packing, in order: enough to give rows of 1-3 segments.
    rows, current = [], []
    for sample in samples:
        ids, labels = tokenize_sample(tokenizer, sample, image_token_id)
        sample["input_ids"], sample["labels"] = ids, labels
        if current and sum(len(s["input_ids"]) for s in current) + len(ids) > seq_len:
            rows.append(current)
            current = []
        current.append(sample)
    rows.append(current)

    def row_record(segments):
        return {
            "input_ids": [t for s in segments for t in s["input_ids"]],
            "labels": [t for s in segments for t in s["labels"]],
            "segment_lengths": [len(s["input_ids"]) for s in segments],
            "images": [s["image"] for s in segments if s["image"] is not None],
            "ids": [s["id"] for s in segments],
            "task": [s["task"] for s in segments],
        }

    image_struct = pa.struct([("shard", pa.string()), ("key", pa.string()), ("path", pa.string()),
                              ("url", pa.string()), ("width", pa.int32()), ("height", pa.int32())])
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                        ("segment_lengths", pa.list_(pa.int32())), ("images", pa.list_(image_struct)),
                        ("ids", pa.list_(pa.string())), ("task", pa.list_(pa.string()))])
    for shard, start in enumerate(range(0, len(rows), rows_per_shard)):
        records = [row_record(r) for r in rows[start: start + rows_per_shard]]
        pq.write_table(pa.Table.from_pylist(records, schema=schema), pack_dir / "shards" / f"packed-{shard:05d}.parquet")
    (pack_dir / "manifest.json").write_text(json.dumps({
        "stage": "pack", "seq_len": seq_len, "visual_tokens": PRESET.visual_tokens, "image_token": "<image>",
        "image_token_id": image_token_id, "preset": PRESET.name, "pad_token_id": tokenizer.pad_token_id,
        "rows": len(rows),
    }))
    return pack_dir, samples


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_packed_corpus(tmp_path_factory.mktemp("corpus"))


def test_batch_pads_rows_with_pad_id_and_no_loss_as_a_segment_of_its_own(corpus):
    pack_dir, _ = corpus
    dataset = PackedDataset(pack_dir, batch_size=3, shuffle=False)
    batch, _ = next(dataset.batches())
    real_lengths = (batch.input_ids != dataset.pad_token_id).sum(dim=1).tolist()
    assert batch.input_ids.shape == (3, max(real_lengths))
    padded = [b for b, n in enumerate(real_lengths) if n < max(real_lengths)]
    assert padded, "the fixture's first rows should differ in length"
    for b in padded:
        n = real_lengths[b]
        assert (batch.labels[b, n:] == -100).all()
        # The padded tail is one more document, with positions restarting at 0.
        assert batch.document_ids[b, n] == batch.document_ids[b, n - 1] + 1
        assert batch.position_ids[b, n] == 0
        assert (batch.document_ids[b, n:] == batch.document_ids[b, n]).all()


def test_positions_restart_at_every_segment(corpus):
    pack_dir, samples = corpus
    dataset = PackedDataset(pack_dir, batch_size=1, shuffle=False)
    batch, _ = next(dataset.batches())
    first_row_ids = batch.ids[0]
    lengths = [len(next(s for s in samples if s["id"] == i)["input_ids"]) for i in first_row_ids]
    expected = torch.cat([torch.arange(n) for n in lengths])
    assert len(lengths) > 1
    assert torch.equal(batch.position_ids[0], expected)
    assert batch.pixel_values.shape[1:] == (3, PRESET.image_size, PRESET.image_size)


def test_order_is_a_function_of_seed_and_epoch_and_covers_every_row_once(corpus):
    pack_dir, _ = corpus
    dataset = PackedDataset(pack_dir, batch_size=2, seed=7)
    again = PackedDataset(pack_dir, batch_size=2, seed=7)
    assert dataset.order(0) == again.order(0)
    assert dataset.order(0) != dataset.order(1)
    assert sorted(dataset.order(0)) == sorted(dataset.order(1))
    assert len(set(dataset.order(0))) == dataset.num_rows


def test_resuming_from_a_data_position_continues_the_same_stream(corpus):
    pack_dir, _ = corpus
    dataset = PackedDataset(pack_dir, batch_size=2, seed=3)
    stream = dataset.batches()
    reference = [next(stream) for _ in range(dataset.batches_per_epoch + 2)]  # crosses an epoch boundary
    position = reference[1][1]
    resumed = PackedDataset(pack_dir, batch_size=2, seed=3).batches(start=position)
    for batch, expected_position in reference[2:]:
        got, got_position = next(resumed)
        assert torch.equal(got.input_ids, batch.input_ids)
        assert got_position == expected_position
    assert reference[-1][1].epoch == 1


def test_tar_and_path_references_load_the_drawn_image(corpus):
    _, samples = corpus
    from_tar = next(s for s in samples if s["image"] and s["image"]["shard"])
    from_path = next(s for s in samples if s["image"] and s["image"]["path"])
    for sample in (from_tar, from_path):
        image = load_image(sample["image"])
        assert image.size == tuple(sample["size"])
        centre = image.getpixel((image.width // 2, image.height // 2))
        assert max(abs(a - b) for a, b in zip(centre, COLOURS[sample["colour"]])) < 12
    with pytest.raises(FileNotFoundError, match="key nope"):
        load_image({"shard": from_tar["image"]["shard"], "key": "nope"})
    with pytest.raises(FileNotFoundError, match="run ingest"):
        load_image({"url": "http://example.com/a.jpg"})


def test_images_are_padded_to_square_with_the_mean_colour_then_normalised():
    wide = Image.new("RGB", (80, 40), (255, 0, 0))
    fill = tuple(int(round(m * 255)) for m in PRESET.image_mean)
    square = expand_to_square(wide, fill)
    assert square.size == (80, 80)
    assert square.getpixel((0, 0)) == fill and square.getpixel((40, 40)) == (255, 0, 0)

    pixels = ImageProcessor(PRESET)(wide)  # (3, 64, 64)
    assert pixels.shape == (3, 64, 64)
    # The padded band normalises to ~0 (it is the mean), the red band to CLIP's red value.
    assert pixels[:, 2, 32].abs().max() < 0.02
    expected_red = (1.0 - PRESET.image_mean[0]) / PRESET.image_std[0]
    assert abs(pixels[0, 32, 32].item() - expected_red) < 0.02
