"""Stage manifests: what a stage read, wrote and dropped, and whether a re-run may skip it."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

LOOM_VERSION = "0.1.0"
MANIFEST = "manifest.json"
# `.{name}.tmp-{pid}`: the name write_atomic (and the shard writers) give a file until it is complete
TEMPORARY_NAME = re.compile(r"\..+\.tmp-(\d+)")


def config_hash(section: Any) -> str:
    """A stable hash of a config section (key order does not matter)."""
    text = json.dumps(section, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def input_fingerprint(path: str | os.PathLike) -> str | None:
    """Identity of an input file, local or any fsspec URL, for skip decisions; None when it does not exist."""
    import fsspec

    fs, fs_path = fsspec.core.url_to_fs(str(path))
    return str(fs.checksum(fs_path)) if fs.exists(fs_path) else None


def temporary_name(path: str | os.PathLike) -> Path:
    """Where a file is written until it is complete: `.{name}.tmp-{pid}` beside it (TEMPORARY_NAME)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | Callable[[], int] | None = None):
    """A temporary path beside `path` to write the whole file to; renamed onto `path` when the block
    finishes, removed when it raises. Readers see either no file (or the old one) or the whole new one.
    A full disk is raised as OSError(ENOSPC) naming `path`, with `needed` (about the bytes of the file, where
    the writer knows; a function is called only then) as its `needed` attribute.

        with atomic_path(out / "part-00001.parquet") as tmp:
            pq.write_table(table, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if getattr(err, "errno", None) == errno.ENOSPC:  # pyarrow's and Python's writes say so; name the file
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            # at least a block more than it got down; a disk allocates whole 4 KiB blocks
            full.needed = max(-(-((needed() if callable(needed) else needed) or 0) // 4096) * 4096, written + 4096)
            raise full from err
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a file so that a reader sees either the old file or the whole new one."""
    data = data.encode() if isinstance(data, str) else data
    with atomic_path(path, needed=len(data)) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_parquet_atomic(table, path: str | os.PathLike, **options) -> None:
    """A pyarrow table as parquet, written so that a reader sees either no file or the whole one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def needed() -> int:  # the data uncompressed, and the schema and footer a file of no rows holds
        footer = pa.BufferOutputStream()
        pq.write_table(table.slice(0, 0), footer, **options)
        return table.nbytes + footer.getvalue().size

    with atomic_path(path, needed=needed) as tmp:
        pq.write_table(table, tmp, **options)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_manifest(stage_dir: str | os.PathLike) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text())


def manifest_hash(stage_dir: str | os.PathLike) -> str:
    """Identity of a finished stage output, used by the stages that read it."""
    return file_hash(Path(stage_dir) / MANIFEST)


@dataclass
class StageRecord:
    """Counts a stage keeps while it runs, written as its manifest when it finishes."""

    stage: str
    config: Any
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> its manifest hash
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "loom_version": LOOM_VERSION,
            "config_hash": config_hash(self.config),
            "inputs": self.inputs,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(sorted(self.dropped.items())),
            "wall_time_s": round(time.time() - self.started, 3),
            **self.extra,
        }

    def finish(self, stage_dir: str | os.PathLike) -> dict:
        manifest = self.to_dict()
        write_json_atomic(Path(stage_dir) / MANIFEST, manifest)
        return manifest


def is_complete(stage_dir: str | os.PathLike, config: Any, inputs: dict[str, str]) -> bool:
    """True when the stage already ran with this config on these exact inputs."""
    manifest = read_manifest(stage_dir)
    return (
        manifest is not None
        and manifest.get("config_hash") == config_hash(config)
        and manifest.get("inputs") == inputs
    )


def _alive_other(pid: int) -> bool:
    """Whether `pid` is a live process other than this one (on this host: the out lock keeps a run folder
    to one host's writers)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OverflowError:  # not a pid at all
        return False
    return True


def start_or_resume(stage_dir: str | os.PathLike, config: Any) -> None:
    """Keep a half-finished run of the same config, to resume it; clear one of any other config.

    A stage folder holds a marker with the hash of the config that started it, so work done
    under an old config is never mistaken for progress under a new one. What a killed run was
    still writing (`write_atomic`'s temporary files, named by their writer's pid) is removed: it never
    became output. A temporary file of a process still alive is its own and stays (a writer of another
    folder, or one the out lock did not stop, is never robbed of a file half written).
    """
    stage_dir = Path(stage_dir)
    marker = stage_dir / ".config_hash"
    wanted = config_hash(config)
    if stage_dir.exists() and not (marker.exists() and marker.read_text() == wanted):
        import shutil

        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    for unfinished in stage_dir.rglob(".*.tmp-*"):
        named = TEMPORARY_NAME.fullmatch(unfinished.name)
        if named and unfinished.is_file() and not _alive_other(int(named.group(1))):
            unfinished.unlink(missing_ok=True)
    write_atomic(marker, wanted)
