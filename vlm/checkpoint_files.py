"""Checkpoint folders written whole and checked before they are used.

A folder is written under a temporary name, closed by `checksums.json` (every file's size and CRC-32, written
last, so its presence means every file before it is complete), flushed to disk and renamed into place; the
folder it replaces can be kept beside it as `<name>.previous`. `verify` compares a folder with its
checksums.json (or, for a folder written before checksums existed, checks each file's own structure) and
names the first damaged file and what is wrong with it, so a loader can fall back to the previous checkpoint
or tell the user which file to replace.

CRC-32 rather than a cryptographic hash: the threat is a disk, a copy or a kill, not an adversary, and it
runs at memory speed (a 70 GB optimizer state is checked in seconds, not minutes).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHECKSUMS = "checksums.json"
PREVIOUS = ".previous"
# what each file of a checkpoint holds, in the words an error message uses
KINDS = {"model.safetensors": "safetensors", "optimizer.pt": "optimizer state", "scheduler.pt": "scheduler state",
         "rng.pt": "RNG state", "trainer_state.json": "trainer state", "config.json": "model config",
         CHECKSUMS: "checksum list"}
MIN_FREE_BYTES = 1 << 20  # a write that fails with less than this left on its disk failed for want of space


class DamagedCheckpoint(ValueError):
    """A checkpoint file that is missing, truncated or not what was written; the message names the file."""


def kind(path: Path) -> str:
    if path.name in KINDS:
        return KINDS[path.name]
    return {".safetensors": "safetensors", ".json": "JSON file", ".pt": "torch file", ".bin": "torch file"}.get(
        path.suffix, "file")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def written_folder(path: str | os.PathLike, keep_previous: bool = False, needed: int | None = None):
    """A temporary folder to write a whole checkpoint into; when the block finishes its checksums are written
    and it replaces `path` (the folder it replaces kept as `<path>.previous` when `keep_previous`, else
    removed). When the block raises, `path` is left as it was; a full disk is raised as OSError(ENOSPC) naming
    the file being written, with `needed`, the bytes the whole folder takes, as its `needed` attribute (and
    three times that, the peak with a previous folder kept, as `stage_needs`).

        with written_folder(out / "checkpoint", keep_previous=True) as tmp:
            save_file(weights, tmp / "model.safetensors")
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed writer's: it never became a checkpoint
    try:
        tmp.mkdir(parents=True)
        yield tmp
        _write_checksums(tmp)
    except BaseException as err:
        full = _disk_full(err, tmp, path, needed)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            if keep_previous and needed:  # the newest, the previous and the one being written, at the peak
                full.stage_needs = 3 * needed
            raise full from err
        raise
    replaced = path.with_name(path.name + PREVIOUS) if keep_previous else path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        path.rename(replaced)
    tmp.rename(path)
    if not keep_previous:
        shutil.rmtree(replaced, ignore_errors=True)
    _fsync(path.parent)


def folder_bytes(folder: str | os.PathLike) -> int | None:
    """The disk a folder written by `written_folder` takes (each file rounded up to 4 KiB blocks), from its
    checksums: what writing its successor needs. None without a checksum list."""
    try:
        files = json.loads((Path(folder) / CHECKSUMS).read_text())["files"]
        return sum(-(-int(entry["bytes"]) // 4096) * 4096 for entry in files.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_checksums(folder: Path) -> None:
    """Flush every file of `folder` to disk, then write their sizes and CRC-32s, last."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with ThreadPoolExecutor(max_workers=min(8, len(files) or 1)) as pool:  # zlib releases the GIL
        entries = dict(zip((p.relative_to(folder).as_posix() for p in files), pool.map(_flushed_entry, files)))
    with open(folder / CHECKSUMS, "w") as f:
        json.dump({"files": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync(folder)


def _flushed_entry(path: Path) -> dict:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "crc32": _crc32(path)}


def _crc32(path: Path) -> str:
    value = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def _fsync(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _disk_full(err: BaseException, tmp: Path, final: Path, needed: int | None) -> OSError | None:
    """`err` as OSError(ENOSPC) naming the file being written (by its name in `final`), when it failed for want
    of space. safetensors says "os error 28" in its message; torch.save's writer says only "unexpected pos",
    so a failure with next to nothing left on the disk counts too."""
    said = getattr(err, "errno", None) == errno.ENOSPC or "os error 28" in str(err) or "No space left" in str(err)
    if not said:
        try:
            said = isinstance(err, (OSError, RuntimeError)) and shutil.disk_usage(final.parent).free < MIN_FREE_BYTES
        except OSError:
            return None
    if not said:
        return None
    files = [p for p in tmp.rglob("*") if p.is_file()] if tmp.is_dir() else []
    writing = max(files, key=lambda p: p.stat().st_mtime_ns, default=None)  # the file it was writing
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final / writing.relative_to(tmp) if writing else final))
    full.needed = needed
    return full


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------

def verify(folder: str | os.PathLike, required: tuple[str, ...] = ()) -> None:
    """Raise DamagedCheckpoint naming the first file of `folder` that is missing (listed in its checksums, or
    one of `required`), shorter or longer than written, or not its bytes; a folder without checksums.json
    (written before them) has each file's structure checked instead."""
    folder = Path(folder)
    listing = folder / CHECKSUMS
    for name in required:
        if not (folder / name).is_file():
            raise DamagedCheckpoint(f"{folder / name}: missing (a checkpoint holds {', '.join(required)})")
    if not listing.is_file():
        for name in required:
            check_structure(folder / name)
        return
    try:
        files = json.loads(listing.read_text())["files"]
        entries = [(folder / name, int(entry["bytes"]), str(entry["crc32"])) for name, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DamagedCheckpoint(f"{listing}: damaged checksum list ({type(err).__name__}: {err})") from err
    for path, expected, _ in entries:
        if not path.is_file():
            raise DamagedCheckpoint(f"{path}: missing ({kind(path)} of {expected} bytes listed in {listing.name})")
        size = path.stat().st_size
        if size != expected:
            what = "empty" if size == 0 else "truncated" if size < expected else "overlong"
            raise DamagedCheckpoint(f"{path}: {what} {kind(path)} ({size} of {expected} bytes)")
    with ThreadPoolExecutor(max_workers=min(8, len(entries) or 1)) as pool:
        actual = list(pool.map(_crc32, [path for path, _, _ in entries]))
    for (path, _, crc), found in zip(entries, actual):
        if found != crc:
            raise DamagedCheckpoint(f"{path}: damaged {kind(path)} (CRC-32 {found}, written as {crc}; "
                                    "same length, other bytes)")


def check_structure(path: Path) -> None:
    """A file's own consistency, for folders without checksums: a safetensors header whose tensors end where
    the file does, a torch file that is a whole zip archive, JSON that parses."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            try:
                if not 0 < length <= size - 8:
                    raise ValueError(f"header of {length} bytes")
                header = json.loads(f.read(length))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise DamagedCheckpoint(f"{path}: not a safetensors file ({size} bytes; {err})") from err
        expected = 8 + length + end
        if size != expected:
            what = "empty" if size == 0 else "truncated" if size < expected else "overlong"
            raise DamagedCheckpoint(f"{path}: {what} safetensors ({size} of {expected} bytes)")
    elif path.suffix in (".pt", ".bin"):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            what = "empty" if size == 0 else "not a whole"
            raise DamagedCheckpoint(f"{path}: {what} {kind(path)} ({size} bytes; torch.save writes a zip archive, "
                                    f"this is not one: {err})") from err
    elif path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as err:
            raise DamagedCheckpoint(f"{path}: damaged {kind(path)} ({size} bytes, not JSON: {err})") from err
