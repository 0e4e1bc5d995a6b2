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
from .model import positions_from_document_ids, shifted_targets
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
    pixel_values: torch.Tensor | None  # (N, 3, H, W), images in order of appearance
    num_tokens: int  # supervised tokens, for per-token loss normalisation
    real_tokens: int  # non-padding tokens
    ids: list[list[str]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "Batch":
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.input_ids), move(self.labels), move(self.position_ids), move(self.document_ids),
            move(self.pixel_values), self.num_tokens, self.real_tokens, self.ids,
        )

    def model_inputs(self) -> dict[str, Any]:
        return dict(
            input_ids=self.input_ids, pixel_values=self.pixel_values, position_ids=self.position_ids,
            labels=self.labels, document_ids=self.document_ids,
        )


class _ShardRows:
    """The rows of one parquet shard, token columns kept as flat arrays plus offsets."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq  # lazy: only the reader needs pyarrow

        table = pq.read_table(path, columns=["input_ids", "labels", "segment_lengths", "images", "ids"])
        self.columns = {}
        for name in ("input_ids", "labels", "segment_lengths"):
            array = table.column(name).combine_chunks()
            self.columns[name] = (
                torch.from_numpy(array.offsets.to_numpy(zero_copy_only=False).astype("int64")),
                torch.from_numpy(array.values.to_numpy(zero_copy_only=False).astype("int64")),
            )
        self.images = table.column("images").to_pylist()
        self.ids = table.column("ids").to_pylist()

    def get(self, row: int, name: str) -> torch.Tensor:
        offsets, values = self.columns[name]
        return values[offsets[row]: offsets[row + 1]]


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
        self.images = ImageProcessor(self.preset, root=self.pack_dir)
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
        input_ids, labels, segments, images, ids = [], [], [], [], []
        for shard, row in rows:
            data = self._shard(shard)
            input_ids.append(data.get(row, "input_ids"))
            labels.append(data.get(row, "labels"))
            segments.append(data.get(row, "segment_lengths"))
            images.extend(data.images[row] or [])
            ids.append(list(data.ids[row] or []))
        length = max(len(t) for t in input_ids)
        batch = len(rows)
        input_tensor = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        label_tensor = torch.full((batch, length), -100, dtype=torch.long)
        document_ids = torch.empty((batch, length), dtype=torch.long)
        for b, (tokens, target, lengths) in enumerate(zip(input_ids, labels, segments)):
            n = len(tokens)
            if int(lengths.sum()) != n:
                raise ValueError(f"packed row {rows[b]}: segment_lengths sum to {int(lengths.sum())}, row has {n} tokens")
            input_tensor[b, :n] = tokens
            label_tensor[b, :n] = target
            document_ids[b, :n] = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
            document_ids[b, n:] = len(lengths)
        pixel_values = self.images.stack(images)  # (N, 3, H, W) or None
        found = int((input_tensor == self.image_token_id).sum())
        if found != len(images) * self.preset.visual_tokens:
            raise ValueError(
                f"packed rows {rows}: {found} image tokens but {len(images)} image references x "
                f"{self.preset.visual_tokens} visual tokens; the pack does not match preset {self.preset.name!r}"
            )
        return Batch(
            input_ids=input_tensor,
            labels=label_tensor,
            position_ids=positions_from_document_ids(document_ids),
            document_ids=document_ids,
            pixel_values=pixel_values,
            num_tokens=int((shifted_targets(label_tensor, document_ids) != -100).sum()),
            real_tokens=sum(len(t) for t in input_ids),
            ids=ids,
        )
