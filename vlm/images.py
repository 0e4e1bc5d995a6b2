"""Image references to pixel tensors, the way LLaVA-1.5 prepares them.

A reference comes from a packed or instruction row: a webdataset shard and key,
a path on disk, or (not loadable here) only a URL. Preparation follows LLaVA-1.5's
`image_aspect_ratio="pad"`: pad to a square with the mean colour, so no part of
the image is cropped away, then resize and normalise with CLIP's constants.
"""

from __future__ import annotations

import io
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image

from .preset import Preset

# Extensions a webdataset sample may store its image under, in the order we try them.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class TarShards:
    """Reads members of webdataset tar shards, keeping open files and member indexes.

    Indexing a tar means reading every header, so it is done once per shard; a small
    LRU of open shards keeps file handles bounded when a pack references thousands.
    """

    def __init__(self, max_open: int = 16):
        self.max_open = max_open
        self._open: OrderedDict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = OrderedDict()

    def read(self, shard: str, key: str) -> bytes:
        tar, members = self._get(shard)
        for ext in IMAGE_EXTENSIONS:
            info = members.get(f"{key}.{ext}")
            if info is not None:
                return tar.extractfile(info).read()
        raise FileNotFoundError(
            f"shard {shard}, key {key}: no image member ({', '.join(f'{key}.{e}' for e in IMAGE_EXTENSIONS)})"
        )

    def _get(self, shard: str):
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        tar = tarfile.open(shard, "r:")
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        self._open[shard] = (tar, members)
        while len(self._open) > self.max_open:
            _, (old, _) = self._open.popitem(last=False)
            old.close()
        return tar, members

    def close(self):
        for tar, _ in self._open.values():
            tar.close()
        self._open.clear()


def _resolve(path: str, root: Path | None) -> str:
    """A reference's path: a relative one from `root` (the run folder), unless it exists only as given."""
    p = Path(path)
    if not p.is_absolute() and root is not None and ((root / p).exists() or not p.exists()):
        return str(root / p)
    return str(p)


def _under_root(reference: Mapping, roots: Mapping[str, str | Path] | None) -> str:
    """The file a {root: NAME, path: relative} reference names, from the folder `roots` gives NAME."""
    name, path = reference["root"], reference["path"]
    folder = (roots or {}).get(name)
    if folder is None:
        raise FileNotFoundError(f"image {path!r} (root {name!r}): no folder declared for root {name!r}; "
                                f"set train.image_roots: {{{name}: FOLDER}} to the folder holding its images")
    file = Path(folder) / path
    if not file.is_file():
        raise FileNotFoundError(f"image {path!r} (root {name!r}): {file} does not exist (root {name!r} is {folder}); "
                                f"if its dataset moved, set train.image_roots: {{{name}: NEW_FOLDER}}")
    return str(file)


def load_image(reference: Any, root: str | Path | None = None, shards: TarShards | None = None,
               roots: Mapping[str, str | Path] | None = None) -> Image.Image:
    """The RGB image a reference points to (a dict with shard+key or path, a path, or a PIL image). A
    relative shard or path is read from `root` (the run folder) where it is not found as given; a
    {root: NAME, path} reference from the folder `roots` names NAME (the render manifest's image_roots)."""
    if isinstance(reference, Image.Image):
        return reference.convert("RGB")
    root = Path(root) if root is not None else None
    if isinstance(reference, (str, Path)):
        reference = {"path": str(reference)}
    if not isinstance(reference, Mapping):
        raise TypeError(f"image reference {reference!r}: expected a dict with shard+key or path, a path or a PIL image")
    if reference.get("shard") and reference.get("key") is not None:
        shard = _resolve(reference["shard"], root)
        data = (shards or _default_shards).read(shard, str(reference["key"]))
        where = f"shard {shard}, key {reference['key']}"
    elif reference.get("path"):
        path = _under_root(reference, roots) if reference.get("root") else _resolve(reference["path"], root)
        data = Path(path).read_bytes()
        where = path
    elif reference.get("url"):
        raise FileNotFoundError(
            f"image {reference['url']}: only a URL, no local copy (shard+key or path); run ingest to download it"
        )
    else:
        raise ValueError(f"image reference {dict(reference)}: needs shard+key or path")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises many types for undecodable bytes
        raise ValueError(f"{where}: not a decodable image ({len(data)} bytes): {error}") from error
    return image.convert("RGB")


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pads the shorter side symmetrically with `fill`, as LLaVA-1.5's expand2square."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


class ImageProcessor:
    """Turns image references into normalised (3, H, W) tensors for one preset."""

    def __init__(self, preset: Preset, root: str | Path | None = None, shards: TarShards | None = None,
                 image_size: int | None = None, roots: Mapping[str, str | Path] | None = None):
        self.preset = preset
        self.image_size = image_size or preset.image_size  # a stage may train at its own resolution
        # LLaVA-1.5's expand2square colour, tuple(int(x * 255) for x in image_mean): truncated, not rounded, as
        # transformers' LlavaImageProcessor(do_pad=True) pads too, so an exported processor gives the same pixels
        self.fill = tuple(int(m * 255) for m in preset.image_mean)
        self.mean = torch.tensor(preset.image_mean).view(3, 1, 1)
        self.std = torch.tensor(preset.image_std).view(3, 1, 1)
        self.root = root
        self.roots = dict(roots or {})  # named image folders: {root: NAME, path} references are read from them
        self.shards = shards or TarShards()

    def __call__(self, reference: Any) -> torch.Tensor:
        image = load_image(reference, root=self.root, shards=self.shards, roots=self.roots)
        image = expand_to_square(image, self.fill)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(self.image_size, self.image_size, 3).permute(2, 0, 1).float() / 255.0  # (3, H, W)
        return (pixels - self.mean) / self.std

    def native(self, reference: dict) -> torch.Tensor:
        """(3, H, W) normalised pixels at the size Qwen2-VL's resize rule gives the reference's width and
        height (multiples of 28 px), as its image processor resizes: bicubic, no padding to a square."""
        from .preset import qwen2_vl_resized

        factor = self.preset.patch_size * self.preset.vision.get("spatial_merge_size", 2)
        size = reference.size if isinstance(reference, Image.Image) else (reference["width"], reference["height"])
        height, width = qwen2_vl_resized(int(size[1]), int(size[0]), factor=factor)
        image = load_image(reference, root=self.root, shards=self.shards, roots=self.roots)
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(height, width, 3).permute(2, 0, 1).float() / 255.0  # (3, H, W)
        return (pixels - self.mean) / self.std

    def stack(self, references: list[Any]) -> torch.Tensor | None:
        """(N, 3, H, W) for N references, or None when there are none."""
        if not references:
            return None
        return torch.stack([self(r) for r in references])

    def model_pixels(self, references: Sequence[Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(pixel_values, image_grid_thw) of N references as the preset's model reads them: Qwen2-VL's patches
        at native resolution and their grids, else (N, 3, H, W) (None without references) and no grid."""
        if self.preset.native_resolution and references:
            from .qwen2_vl import patchify

            return patchify([self.native(r) for r in references], patch_size=self.preset.patch_size,
                            merge_size=self.preset.vision.get("spatial_merge_size", 2))
        return self.stack(list(references)), None


_default_shards = TarShards()
