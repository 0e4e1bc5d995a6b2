"""One writer per run folder: a `loom` command holds `--out`'s lock while it works there.

The lock is an flock on `OUT/.loom-lock`, so the kernel releases it when its holder dies, however it
dies. The file names the holder (pid, host, command, start time): a second command is refused with
those, and a command that finds the name of a holder that died without releasing the lock takes it
over and says so.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".loom-lock"


class OutInUse(RuntimeError):
    """Another process is writing the same run folder."""


def _holder(file) -> dict:
    file.seek(0)
    try:
        return json.loads(file.read() or "{}")
    except json.JSONDecodeError:
        return {}


@contextlib.contextmanager
def out_lock(out: str | os.PathLike, log=print):
    """Hold the run folder `out` for the length of the block; refuse if another process holds it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    file = open(out / LOCK_NAME, "a+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(file)
        file.close()
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?"
        raise OutInUse(f"{out}: in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {since} "
                       f"(`{holder.get('command', '?')}`); wait for it to finish, stop it, or give another --out")
    previous = _holder(file)
    if previous.get("pid"):  # written by a holder that died before it released the folder
        log(f"loom: {out}: taking over the lock of pid {previous['pid']} on {previous.get('host', '?')} "
            f"(`{previous.get('command', '?')}`), which stopped without releasing it")
    file.seek(0)
    file.truncate()
    file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                           "command": " ".join(["loom", *sys.argv[1:]])}))
    file.flush()
    try:
        yield
    finally:
        file.seek(0)
        file.truncate()  # released cleanly: nobody to report
        file.flush()
        fcntl.flock(file, fcntl.LOCK_UN)
        file.close()
