"""`loom ingest` killed with SIGKILL at any moment and re-run: the same pairs as a run never killed.

A real job (`python -m jobs.cli ingest`) is killed three times, each re-run resuming the folder
the killed one left: its driver alone while img2dataset downloads (some download shards finished,
some half written) and while shards go through the filters (some shards' rows kept,
others still in flight); the driver and every process it started while the pairs shards are
written (some finished, some not). The moments are found by watching
what the job writes, not by guessing times. An uninterrupted run beside it is the reference.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.ingest.shards import read_pairs_index

REPO = Path(__file__).resolve().parents[1]
WORLD = {"seed": 5, "pair_scenes": 150, "train_scenes": 1, "val_scenes": 1}
SHARDS = 6  # download shards of 30 rows: 150 scenes + 24 bad rows (pipelines/shapes_world BAD_ROWS_PER_KIND)
# Ray processes that only report on a node and never touch a job's files; they notice their
# raylet is gone on a timer of their own (about a minute), after the test has moved on.
RAY_REPORTERS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def write_config(path: Path) -> Path:
    path.write_text(
        "ingest:\n"
        f"  sources: [{{path: '{path.parent / 'world' / 'urls.parquet'}', url_col: url, caption_col: caption}}]\n"
        "  allow_private_network: true\n"
        "  image_size: 64\n"
        "  download_shard_size: 30\n"
        "  samples_per_shard: 8\n"
    )
    return path


def serve_world(world_dir: Path) -> subprocess.Popen:
    """The shapes world on the port its URL list names, served by a process of its own."""
    port = json.loads((world_dir / "world.json").read_text())["port"]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(world_dir / "web")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            assert server.poll() is None and time.time() < deadline, f"could not serve {world_dir} on port {port}"
            time.sleep(0.05)


def session_processes(session: int) -> dict[int, str]:
    """pid → command line of every live process in a killed job's session (it ran as a session leader)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != session:
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found[int(entry)] = cmdline
        except (OSError, IndexError):
            continue
    return found


def ray_writers(session: int) -> dict[int, str]:
    """The killed job's Ray processes that could still write into its folder: raylet, GCS, workers."""
    return {pid: cmd for pid, cmd in session_processes(session).items()
            if ("ray::" in cmd or "/ray/core/" in cmd) and not cmd.startswith(RAY_REPORTERS)}


class Ingest:
    """Runs `loom ingest` on one config into one folder, killing it at chosen moments."""

    def __init__(self, config: Path, out: Path):
        self.config, self.out, self.stage = config, out, out / "ingest"
        self.log = out.with_suffix(".log")
        self.log_start = 0  # where the current run's lines begin in the log
        self.killed_sessions: list[int] = []
        self.writers_left: dict[int, dict[int, str]] = {}  # session → Ray writers 30 s after the kill
        self.leftovers: dict[int, dict[int, str]] = {}  # session → everything that outlived the driver

    def start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log_start = self.log.stat().st_size if self.log.exists() else 0
        self.started = time.time()
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "jobs.cli", "ingest", str(self.config), "--out", str(self.out)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def run_to_completion(self) -> None:
        job = self.start()
        assert job.wait(timeout=240) == 0, self.log_tail()
        with open(self.log, "a") as log:
            log.write(f"\n==== test: finished in {time.time() - self.started:.1f}s ====\n")

    def kill_when(self, moment, what: str, at_kill, whole_job: bool = False, wait_for_writers: bool = False):
        """Start a run and SIGKILL it once `moment()` holds; return `at_kill()` seen right then.

        Only the driver is killed (`kill -9 PID`), or with `whole_job` every process it started too
        (`kill -9 -PGID`, as an OOM kill of its cgroup or a scheduler cancelling the job would).
        """
        job = self.start()
        deadline = time.time() + 120
        while not moment():
            assert job.poll() is None, f"ingest finished before {what}:\n{self.log_tail()}"
            assert time.time() < deadline, f"no sign of {what} in 120 s:\n{self.log_tail()}"
            time.sleep(0.02)
        if whole_job:
            os.killpg(job.pid, signal.SIGKILL)
        else:
            os.kill(job.pid, signal.SIGKILL)
        seen = at_kill()
        job.wait()
        self.killed_sessions.append(job.pid)
        with open(self.log, "a") as log:
            log.write(f"\n==== test: SIGKILL {job.pid} {what}, {time.time() - self.started:.1f}s in: {seen} ====\n")
        if wait_for_writers:
            self.wait_for_writers(job.pid)
        return seen

    def wait_for_writers(self, session: int) -> None:
        """Wait (30 s at most) for a killed job's Ray workers to exit; note what is still alive."""
        deadline = time.time() + 30
        while ray_writers(session) and time.time() < deadline:
            time.sleep(0.1)
        self.writers_left[session] = ray_writers(session)
        self.leftovers[session] = session_processes(session)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def logged(self, text: str) -> bool:
        """Whether the current run has logged `text`."""
        with open(self.log, "rb") as log:
            log.seek(self.log_start)
            return text.encode() in log.read()


def download_shards(stage: Path) -> tuple[set[str], set[str]]:
    """(started, finished) img2dataset shards: a started one has an attempt folder, a finished one its own
    folder (the attempt renamed into place) with its `_stats.json`."""
    download = stage / "_work" / "download"
    finished = {p.parent.name for p in download.glob("*/*_stats.json") if p.parent.parent == download}
    started = finished | {p.name.split("-")[0] for p in download.glob("attempts/*")}
    return started, finished


def finished_pairs_shards(stage: Path) -> dict[str, tuple[int, int]]:
    """shard name → (tar mtime, index mtime) of every shard whose parquet index is in place."""
    shards = {}
    for index in sorted((stage / "shards").glob("pairs-*.parquet")):
        tar = index.with_suffix(".tar")
        shards[index.stem] = (tar.stat().st_mtime_ns, index.stat().st_mtime_ns)
    return shards


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run A, and a run B killed three times and re-run to completion, side by side."""
    from pipelines.shapes_world import write_demo_data

    root = tmp_path_factory.mktemp("kill")
    write_demo_data(str(root / "world"), **WORLD)
    config = write_config(root / "ingest.yaml")
    started = time.time()  # A runs beside B's kills and re-runs: the test takes about as long as B
    reference, killed = Ingest(config, root / "A"), Ingest(config, root / "B")
    stage = killed.stage
    seen: dict[str, object] = {}
    finished_before_rerun = {}

    def mid_download():
        began, done = download_shards(stage)
        return bool(done) and bool(began - done)

    def mid_stream():  # a later run: some shards' filtered rows kept in work/samples, some not yet
        kept = list((stage / "_work" / "samples").glob("*.parquet"))
        return len(kept) > shards_at_start.get("kept", 0) and len(kept) < SHARDS

    shards_at_start: dict[str, int] = {}

    # The world is served by its own process (not by the job), so that A and B can fetch it at once.
    server = serve_world(root / "world")
    uninterrupted = reference.start()
    try:
        seen["download"] = killed.kill_when(mid_download, "while img2dataset downloads",
                                            at_kill=lambda: download_shards(stage))
        shards_at_start["kept"] = len(list((stage / "_work" / "samples").glob("*.parquet")))
        seen["filter"] = killed.kill_when(mid_stream, "while shards go through the filters",
                                          at_kill=lambda: (stage / "shards").exists())
        seen["shards"] = killed.kill_when(
            lambda: bool(finished_pairs_shards(stage)), "while the pairs shards are written",
            at_kill=lambda: ((stage / "manifest.json").exists(), sorted(os.listdir(stage / "shards"))),
            whole_job=True, wait_for_writers=True)  # so that the shards finished before the re-run are known
        finished_before_rerun.update(finished_pairs_shards(stage))
        killed.run_to_completion()
        assert uninterrupted.wait(timeout=240) == 0, reference.log_tail()
        for session in killed.killed_sessions:  # the earlier kills were re-run without waiting
            killed.wait_for_writers(session)
        seen["total_s"] = time.time() - started
        print(f"\nkill test: {seen}; outlived their killed driver: {killed.leftovers}")
        yield reference, killed, finished_before_rerun, seen
    finally:
        for process in (server, uninterrupted):
            if process.poll() is None:
                process.kill()
                process.wait()
        # What outlived a killed driver is stopped here, by pid, so that no test leaves it running.
        for session in killed.killed_sessions:
            for pid in session_processes(session):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def manifest(run: Ingest) -> dict:
    return json.loads((run.stage / "manifest.json").read_text())


def test_the_kills_landed_where_they_were_aimed(runs):
    _, killed, finished_before_rerun, seen = runs
    started, finished = seen["download"]
    assert finished and started - finished, "killed with some download shards finished and some half written"
    assert not seen["filter"], "killed in the filter pass, before any pairs shard"
    manifest_at_kill, shard_files_at_kill = seen["shards"]
    assert not manifest_at_kill and any(name.endswith(".parquet") for name in shard_files_at_kill)
    assert len(finished_before_rerun) < len(manifest(killed)["shards"])


def test_the_resumed_run_keeps_the_same_pairs_as_an_uninterrupted_one(runs):
    reference, killed, _, _ = runs
    pairs = lambda run: read_pairs_index(run.stage).drop_columns(["shard"]).to_pylist()
    assert pairs(killed) == pairs(reference)
    for shard in manifest(reference)["shards"]:  # byte for byte: no sample half written or repeated
        assert sha256(killed.stage / shard) == sha256(reference.stage / shard), shard


def test_the_resumed_run_drops_the_same_rows_for_the_same_reasons(runs):
    reference, killed, _, _ = runs
    dropped = lambda run: sorted(
        pq.read_table(run.stage / "dropped").to_pylist(), key=lambda row: row["row_id"])
    assert dropped(killed) == dropped(reference)


def test_the_resumed_manifest_counts_match(runs):
    reference, killed, _, _ = runs
    counted = ("config_hash", "inputs", "rows_in", "rows_out", "dropped", "shards", "languages", "kept_by_source")
    assert {k: manifest(killed)[k] for k in counted} == {k: manifest(reference)[k] for k in counted}


def test_no_key_is_written_twice(runs):
    _, killed, _, _ = runs
    keys = read_pairs_index(killed.stage)["key"].to_pylist()
    assert len(keys) == len(set(keys))
    members = []
    for shard in manifest(killed)["shards"]:
        with tarfile.open(killed.stage / shard) as tar:
            members += tar.getnames()
    assert len(members) == len(set(members)) == 3 * len(keys)
    dropped = pq.read_table(killed.stage / "dropped")["row_id"].to_pylist()
    assert len(set(dropped)) == len(dropped) and not set(dropped) & set(
        read_pairs_index(killed.stage)["row_id"].to_pylist())


def test_shards_finished_before_a_kill_are_never_rewritten(runs):
    _, killed, finished_before_rerun, _ = runs
    assert finished_pairs_shards(killed.stage).items() >= finished_before_rerun.items()


def test_no_half_written_file_is_left_in_the_output(runs):
    _, killed, _, _ = runs
    names = sorted(p.name for p in (killed.stage / "shards").iterdir())
    assert names == sorted(n for s in manifest(killed)["shards"] for n in (Path(s).name, Path(s).stem + ".parquet"))
    assert not [p for p in killed.stage.rglob("*") if ".tmp" in p.name], "temporary files left behind"


def test_a_killed_jobs_ray_workers_stop_writing(runs):
    _, killed, _, _ = runs
    assert len(killed.writers_left) == 3
    assert not any(killed.writers_left.values()), killed.writers_left


class Killed(Exception):
    """Stands in for a SIGKILL right after a run has claimed its folder, before any Ray work."""


def killed_at_ray_start(*_, **__):
    raise Killed


def url_list(path: Path, rows: int) -> dict:
    import pyarrow as pa

    urls = [f"http://127.0.0.1:9/images/shape_{i:05d}.jpg" for i in range(rows)]
    pq.write_table(pa.table({"url": urls, "caption": [f"a red circle, number {i}" for i in range(rows)]}), path)
    return {"ingest": {"sources": [{"path": str(path), "url_col": "url", "caption_col": "caption"}],
                       "allow_private_network": True}}


def test_a_resumed_run_clears_what_the_killed_one_was_still_writing(tmp_path, monkeypatch):
    from jobs.ingest import run_ingest

    monkeypatch.setattr("jobs.ray_runtime.ray_session", killed_at_ray_start)
    config = url_list(tmp_path / "urls.parquet", 10)
    with pytest.raises(Killed):
        run_ingest(config, tmp_path / "run", log=lambda *_: None)
    stage = tmp_path / "run" / "ingest"
    (stage / "shards").mkdir()
    finished = [stage / "shards" / "pairs-00000.tar", stage / "shards" / "pairs-00000.parquet",
                stage / "_work" / "download" / "00000" / "00000.tar"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a writer that died: its pid names no process
    dead.wait()
    half_written = [stage / "shards" / f".pairs-00001.tar.tmp-{dead.pid}", stage / f".manifest.json.tmp-{dead.pid}"]
    for path in finished + half_written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    with pytest.raises(Killed):
        run_ingest(config, tmp_path / "run", log=lambda *_: None)
    assert [p.exists() for p in finished] == [True] * 3
    assert [p.exists() for p in half_written] == [False] * 2


def test_a_half_finished_run_is_not_resumed_on_a_changed_url_list(tmp_path, monkeypatch):
    from jobs.ingest import run_ingest

    monkeypatch.setattr("jobs.ray_runtime.ray_session", killed_at_ray_start)
    config = url_list(tmp_path / "urls.parquet", 10)
    with pytest.raises(Killed):
        run_ingest(config, tmp_path / "run", log=lambda *_: None)
    progress = tmp_path / "run" / "ingest" / "_work" / "download" / "00000" / "00000_stats.json"
    progress.parent.mkdir(parents=True)
    progress.write_text("{}")
    with pytest.raises(Killed):  # the same URL list: the progress is kept, to resume from
        run_ingest(config, tmp_path / "run", log=lambda *_: None)
    assert progress.exists()
    url_list(tmp_path / "urls.parquet", 12)  # the list grew: what was fetched from the old one is no progress
    with pytest.raises(Killed):
        run_ingest(config, tmp_path / "run", log=lambda *_: None)
    assert not progress.exists()


def test_unfinished_download_attempts_are_cleared_and_finished_shards_kept(tmp_path):
    from pipelines.ingest.download import clear_unfinished

    for name in ("00000/00000.tar", "00000/00000_stats.json", "00000/00000.parquet",
                 "attempts/00001-1a2b3c/00001.tar", "attempts/00001-1a2b3c/00001.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert clear_unfinished(tmp_path) == ["00001-1a2b3c"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "00000", "00000/00000.parquet", "00000/00000.tar", "00000/00000_stats.json"]
