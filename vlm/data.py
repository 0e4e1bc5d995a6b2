"""Batches of packed rows for training: token tensors, segment layout and pixels.

Reads the pack stage's output (`manifest.json`, `shards/packed-*.parquet`,
`tokenizer/`). The order of rows is a pure function of (seed, epoch): shards
are shuffled, then rows inside each shard, so memory holds one shard at a time
and a data position (epoch, batch index) is enough to resume exactly, without
replaying the batches before it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .images import ImageProcessor
from .packed_masks import positions_from_document_ids, shifted_targets
from .preset import Preset, get_preset


@dataclass(frozen=True)
class DataPosition:
    """Where the next batch comes from: batch `index` of epoch `epoch`."""

    epoch: int = 0
    index: int = 0


@dataclass
class Batch:
    """One micro-batch of packed rows, padded to its longest row."""

    input_ids: torch.Tensor  # (B, L) long
    labels: torch.Tensor  # (B, L) long, -100 where no loss
    position_ids: torch.Tensor  # (B, L) long, restarting at every segment
    document_ids: torch.Tensor  # (B, L) long, padding is a segment of its own
    pixel_values: torch.Tensor | None  # (N, 3, H, W), images in order of appearance (Qwen2-VL: patches)
    num_tokens: int  # supervised tokens, for per-token loss normalisation
    real_tokens: int  # non-padding tokens
    ids: list[list[str]] = field(default_factory=list)
    # encoder-decoder LLMs (FlanT5): input_ids are the encoder's, these the decoder's targets and segments
    decoder_labels: torch.Tensor | None = None  # (B, Ld) long
    decoder_document_ids: torch.Tensor | None = None  # (B, Ld) long
    image_grid_thw: torch.Tensor | None = None  # (N, 3): Qwen2-VL's patch grid of each image
    qformer_input_ids: torch.Tensor | None = None  # (N, T): InstructBLIP, each image's instruction
    qformer_attention_mask: torch.Tensor | None = None  # (N, T)

    def to(self, device: torch.device | str) -> "Batch":
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.input_ids), move(self.labels), move(self.position_ids), move(self.document_ids),
            move(self.pixel_values), self.num_tokens, self.real_tokens, self.ids,
            move(self.decoder_labels), move(self.decoder_document_ids), move(self.image_grid_thw),
            move(self.qformer_input_ids), move(self.qformer_attention_mask),
        )

    def model_inputs(self) -> dict[str, Any]:
        """The keyword arguments of the model's forward for this batch."""
        if self.decoder_labels is not None:  # the encoder reads input_ids; the decoder learns its targets
            inputs = dict(input_ids=self.input_ids, pixel_values=self.pixel_values, labels=self.decoder_labels,
                          document_ids=self.document_ids, decoder_document_ids=self.decoder_document_ids)
        else:
            inputs = dict(input_ids=self.input_ids, pixel_values=self.pixel_values, position_ids=self.position_ids,
                          labels=self.labels, document_ids=self.document_ids)
        if self.image_grid_thw is not None:
            inputs["image_grid_thw"] = self.image_grid_thw
        if self.qformer_input_ids is not None:
            inputs.update(qformer_input_ids=self.qformer_input_ids, qformer_attention_mask=self.qformer_attention_mask)
        return inputs


class _ShardRows:
    """The rows of one parquet shard, token columns kept as flat arrays plus offsets."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq  # lazy: only the reader needs pyarrow

        names = ["input_ids", "labels", "segment_lengths", "images", "ids"]
        if "qformer_ids" in pq.read_schema(path).names:
            names.append("qformer_ids")
        decoder = [n for n in ("decoder_labels", "decoder_segment_lengths") if n in pq.read_schema(path).names]
        table = pq.read_table(path, columns=names + decoder)
        self.columns = {}
        for name in ("input_ids", "labels", "segment_lengths", *decoder):
            array = table.column(name).combine_chunks()
            self.columns[name] = (
                torch.from_numpy(array.offsets.to_numpy(zero_copy_only=False).astype("int64")),
                torch.from_numpy(array.values.to_numpy(zero_copy_only=False).astype("int64")),
            )
        self.images = table.column("images").to_pylist()
        self.ids = table.column("ids").to_pylist()
        self.qformer_ids = table.column("qformer_ids").to_pylist() if "qformer_ids" in names else None

    def get(self, row: int, name: str) -> torch.Tensor:
        offsets, values = self.columns[name]
        return values[offsets[row]: offsets[row + 1]]


def run_roots(run_folder: Path, manifest: dict, image_roots: dict[str, str] | None = None) -> dict[str, str]:
    """The named image folders of a render (or pack) manifest's `image_roots`, a relative one read from
    `run_folder` (it moved with the run), with `image_roots` (train.image_roots) over them."""
    roots = {name: str(run_folder / folder) for name, folder in manifest.get("image_roots", {}).items()}
    return {**roots, **(image_roots or {})}


class PackedDataset:
    """Packed shards of one pack directory, served as deterministic, resumable batches."""

    def __init__(
        self,
        pack_dir: str | Path,
        batch_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        preset: Preset | None = None,
        rank: int = 0,
        world_size: int = 1,
        image_size: int | None = None,
        image_roots: dict[str, str] | None = None,
    ):
        import pyarrow.parquet as pq

        self.pack_dir = Path(pack_dir)
        manifest_path = self.pack_dir / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path}: missing; is {self.pack_dir} the output of the pack stage?")
        self.manifest = json.loads(manifest_path.read_text())
        self.preset = preset or get_preset(self.manifest["preset"])
        self.shards = sorted((self.pack_dir / "shards").glob("packed-*.parquet"))
        if not self.shards:
            raise FileNotFoundError(f"{self.pack_dir / 'shards'}: no packed-*.parquet shards")
        self.rows_per_shard = [pq.ParquetFile(p).metadata.num_rows for p in self.shards]
        if self.manifest.get("visual_tokens", self.preset.visual_tokens) != self.preset.visual_tokens:
            raise ValueError(
                f"{manifest_path}: packed for {self.manifest['visual_tokens']} visual tokens per image, but preset "
                f"{self.preset.name!r} feeds {self.preset.visual_tokens}; re-pack for this preset"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.pad_token_id = int(self.manifest["pad_token_id"])
        self.image_token_id = int(self.manifest["image_token_id"])
        # references relative to the run folder start from the one the pack output sits in (wherever it moved);
        # {root, path} references from the render's named folders, `image_roots` re-pointing any of them
        run_folder = self.pack_dir / self.manifest.get("run_folder", ".")
        self.images = ImageProcessor(self.preset, root=run_folder, image_size=image_size,
                                     roots=run_roots(run_folder, self.manifest, image_roots))
        self._cached: tuple[int, _ShardRows] | None = None

    @property
    def num_rows(self) -> int:
        return sum(self.rows_per_shard)

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank sees per epoch (the last one may be short)."""
        return -(-self.num_rows // self.batch_size) // self.world_size

    def order(self, epoch: int) -> list[tuple[int, int]]:
        """(shard, row) pairs in the order epoch `epoch` reads them."""
        shard_order = list(range(len(self.shards)))
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            rng.shuffle(shard_order)
        pairs = []
        for shard in shard_order:
            rows = list(range(self.rows_per_shard[shard]))
            if self.shuffle:
                rng.shuffle(rows)
            pairs.extend((shard, row) for row in rows)
        return pairs

    def batches(self, start: DataPosition = DataPosition()) -> Iterator[tuple[Batch, DataPosition]]:
        """Endless batches from `start`, each with the position of the batch after it."""
        epoch, index = start.epoch, start.index
        while True:
            order = self.order(epoch)
            while index < self.batches_per_epoch:
                global_index = index * self.world_size + self.rank
                rows = order[global_index * self.batch_size: (global_index + 1) * self.batch_size]
                index += 1
                yield self.collate(rows), DataPosition(epoch, index)
            epoch, index = epoch + 1, 0

    def _shard(self, shard: int) -> _ShardRows:
        if self._cached is None or self._cached[0] != shard:
            self._cached = (shard, _ShardRows(self.shards[shard]))
        return self._cached[1]

    def collate(self, rows: list[tuple[int, int]]) -> Batch:
        """Pads rows to the longest with pad_token_id / -100; padding becomes its own segment."""
        input_ids, labels, segments, images, ids, targets, target_segments, instructions = [], [], [], [], [], [], [], []
        for shard, row in rows:
            data = self._shard(shard)
            input_ids.append(data.get(row, "input_ids"))
            labels.append(data.get(row, "labels"))
            segments.append(data.get(row, "segment_lengths"))
            images.extend(data.images[row] or [])
            ids.append(list(data.ids[row] or []))
            if self.preset.qformer_text:
                instructions.extend(data.qformer_ids[row] if data.qformer_ids else [])
            if self.preset.encoder_decoder:
                targets.append(data.get(row, "decoder_labels"))
                target_segments.append(data.get(row, "decoder_segment_lengths"))
        input_tensor, label_tensor, document_ids = self._pad(rows, input_ids, labels, segments, self.pad_token_id)
        found = int((input_tensor == self.image_token_id).sum())
        expected = sum(self.preset.visual_tokens_for(image) for image in images)
        if found != expected:
            raise ValueError(
                f"packed rows {rows}: {found} image tokens but {len(images)} image references take {expected} "
                f"visual tokens; the pack does not match preset {self.preset.name!r}"
            )
        batch = Batch(
            input_ids=input_tensor,
            labels=label_tensor,
            position_ids=positions_from_document_ids(document_ids),
            document_ids=document_ids,
            pixel_values=None,
            num_tokens=int((shifted_targets(label_tensor, document_ids) != -100).sum()),
            real_tokens=sum(len(t) for t in input_ids),
            ids=ids,
        )
        # (N, 3, H, W) or None; Qwen2-VL's patches and their grids
        batch.pixel_values, batch.image_grid_thw = self.images.model_pixels(images)
        if self.preset.qformer_text and images:
            if len(instructions) != len(images):
                raise ValueError(f"packed rows {rows}: {len(images)} images but {len(instructions)} Q-Former instructions; "
                                 f"pack with preset {self.preset.name!r} so that each image carries its instruction")
            width = max(len(i) for i in instructions)
            batch.qformer_input_ids = torch.full((len(instructions), width), int(self.manifest["qformer_pad_token_id"]))
            batch.qformer_attention_mask = torch.zeros((len(instructions), width), dtype=torch.long)
            for k, instruction in enumerate(instructions):
                batch.qformer_input_ids[k, :len(instruction)] = torch.tensor(instruction)
                batch.qformer_attention_mask[k, :len(instruction)] = 1
        if self.preset.encoder_decoder:  # an encoder-decoder pack: the answers are the decoder's, unshifted, every token learnt
            batch.decoder_labels, _, batch.decoder_document_ids = self._pad(rows, targets, targets, target_segments, -100)
            batch.num_tokens = int((batch.decoder_labels != -100).sum())
        return batch

    @staticmethod
    def _pad(rows, tokens: list[torch.Tensor], targets: list[torch.Tensor], segments: list[torch.Tensor],
             pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, labels, document_ids), each (B, L) padded to the longest row; padding a segment of its own."""
        length = max(len(t) for t in tokens)
        batch = len(tokens)
        ids = torch.full((batch, length), pad, dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        document_ids = torch.empty((batch, length), dtype=torch.long)
        for b, (row_ids, row_labels, lengths) in enumerate(zip(tokens, targets, segments)):
            n = len(row_ids)
            if int(lengths.sum()) != n:
                raise ValueError(f"packed row {rows[b]}: segment_lengths sum to {int(lengths.sum())}, row has {n} tokens")
            ids[b, :n] = row_ids
            labels[b, :n] = row_labels
            document_ids[b, :n] = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
            document_ids[b, n:] = len(lengths)
        return ids, labels, document_ids
