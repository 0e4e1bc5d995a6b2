"""One writer per run folder: a second `loom` command on a folder in use is refused with the holder named,
a lock left by a process killed mid-run is taken over with a message, and a resumed stage removes only the
temporary files whose writer is dead (or itself)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from jobs.cli import main

REPO = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from jobs.out_lock import out_lock
with out_lock(sys.argv[1], log=lambda *_: None):
    print("holding", flush=True)
    time.sleep(600)
"""


def hold(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "holding"
    return holder


def pack_config(tmp_path: Path, seq_len: int) -> Path:
    path = tmp_path / f"pack-{seq_len}.yaml"
    path.write_text(f"pack:\n  seq_len: {seq_len}\n  outputs: {{instruct: {{datasets: [vqav2]}}}}\n")
    return path


def test_a_second_command_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold(out)
    try:
        code = main(["pack", str(pack_config(tmp_path, 1024)), "--out", str(out)])
        error = capsys.readouterr().err
        assert code == 2
        assert f"in use by pid {holder.pid} on {socket.gethostname()}" in error and "give another --out" in error
        assert sorted(p.name for p in out.iterdir()) == [".loom-lock"]  # nothing was started
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_message(tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    code = main(["pack", str(pack_config(tmp_path, 1024)), "--out", str(out)])
    captured = capsys.readouterr()
    assert f"taking over the lock of pid {holder.pid}" in captured.out
    # it went on to the stage itself, which finds no render output there
    assert code == 2 and "no finished render output" in captured.err
    assert (out / ".loom-lock").read_text() == ""  # released cleanly when the command ended


def test_a_released_lock_is_taken_without_a_word(tmp_path, capsys):
    out = tmp_path / "run"
    from jobs.out_lock import out_lock

    with out_lock(out, log=print):
        held = json.loads((out / ".loom-lock").read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    main(["pack", str(pack_config(tmp_path, 1024)), "--out", str(out)])
    assert "taking over" not in capsys.readouterr().out


def half_written(stage: Path, pid: int) -> Path:
    path = stage / "shards" / f".packed-00000-00000.parquet.tmp-{pid}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a shard")
    return path


def test_a_resumed_stage_keeps_the_temporary_file_of_a_process_still_writing_it(tmp_path):
    from pipelines.manifest import start_or_resume

    start_or_resume(tmp_path / "pack", {"seq_len": 1024})
    writer = hold(tmp_path / "elsewhere")  # a live process: the file it names is its own
    try:
        live = half_written(tmp_path / "pack", writer.pid)
        start_or_resume(tmp_path / "pack", {"seq_len": 1024})
        assert live.read_bytes() == b"half a shard"
    finally:
        writer.kill()
        writer.wait()


def test_a_resumed_stage_removes_the_temporary_files_of_dead_writers_and_its_own(tmp_path):
    from pipelines.manifest import start_or_resume

    start_or_resume(tmp_path / "pack", {"seq_len": 1024})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [half_written(tmp_path / "pack", dead.pid), half_written(tmp_path / "pack", os.getpid())]
    start_or_resume(tmp_path / "pack", {"seq_len": 1024})
    assert [path.exists() for path in left] == [False, False]
