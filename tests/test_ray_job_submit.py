"""`loom ingest` submitted with `ray job submit` to a running Ray cluster, exactly as the README shows.

A one-node cluster is started with its job server (`ray start --head`, from `ray[default]`) on free
ports and a temp dir of its own, so neither a local Ray of another test nor a `ray start` on this
machine is joined or stopped; it is stopped by the session its head process leads.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.ingest.shards import read_pairs_index

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # `ray` and `loom` of this environment
# Below the size of many shapes-world images: only the fetch guard in a download worker refuses
# these ('too_large'), so such drops show that the job's workers got Loom's worker setup.
MAX_BYTES = 3000


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def ray_env(token: str) -> dict[str, str]:
    """The environment of the cluster and of the submitting shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the cluster runs `loom` from its PATH
    # a token of this cluster's own, so neither ~/.ray/auth_token nor its absence matters
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    return env


def get_json(url: str, token: str):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def start_head(temp_dir: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    gcs, dashboard, client, agent = free_ports(4)
    log = open(Path(temp_dir) / "head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
         "--temp-dir", temp_dir, "--port", str(gcs), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--min-worker-port", "0", "--max-worker-port", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return head, f"http://127.0.0.1:{dashboard}"


def wait_for_job_server(head: subprocess.Popen, url: str, token: str, temp_dir: str) -> None:
    deadline = time.time() + 90
    while True:
        try:
            get_json(f"{url}/api/jobs/", token)
            return
        except (OSError, urllib.error.URLError, ValueError):
            if head.poll() is not None or time.time() > deadline:
                raise AssertionError("the Ray head did not start its job server:\n"
                                     + (Path(temp_dir) / "head.log").read_text()[-3000:])
            time.sleep(1)


def stop_head(head: subprocess.Popen) -> None:
    """Stop the cluster this head started, and nothing else (`ray stop` would stop every Ray here)."""
    head.send_signal(signal.SIGTERM)  # the head stops every process it started (no drain: see ray_env)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:  # what outlived it (a worker, the job's driver) is still in the session the head leads
            if os.getsid(pid) == head.pid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    head.wait(timeout=10)


@pytest.fixture(scope="module")
def ingest_config(small_world, tmp_path_factory):
    world_dir, _ = small_world
    path = tmp_path_factory.mktemp("config") / "ingest.yaml"
    path.write_text(yaml.safe_dump({"ingest": {
        "sources": [{"path": str(world_dir / "urls.parquet"), "url_col": "url", "caption_col": "caption"}],
        "serve": str(world_dir), "allow_private_network": True, "max_bytes": MAX_BYTES, "image_size": 96,
        "samples_per_shard": 40, "download_shard_size": 50, "seed": 0,
    }}))
    return path


@pytest.fixture(scope="module")
def submitted(ingest_config, tmp_path_factory):
    """The README's `ray job submit` command run against a fresh cluster; what it left and said."""
    out = tmp_path_factory.mktemp("submitted")
    token = secrets.token_hex(32)
    env = ray_env(token)
    temp_dir = tempfile.mkdtemp(prefix="loom-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    head = None
    try:
        head, url = start_head(temp_dir, env)
        wait_for_job_server(head, url, token, temp_dir)
        submission_id = f"loom-ingest-{secrets.token_hex(4)}"
        result = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", url, "--submission-id", submission_id,
             "--working-dir", ".", "--", "loom", "ingest", str(ingest_config), "--out", str(out)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        job = get_json(f"{url}/api/jobs/{submission_id}", token)
        return {"out": out, "result": result, "job": job, "head_alive_after": head.poll() is None}
    finally:
        if head is not None:
            stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local(ingest_config, tmp_path_factory):
    """The same config through `loom ingest` on a local Ray, for comparison."""
    out = tmp_path_factory.mktemp("local")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run([str(BIN / "loom"), "ingest", str(ingest_config), "--out", str(out)],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / "ingest" / "manifest.json").read_text())


def drops(out: Path) -> list[tuple[str, str]]:
    table = pq.read_table(out / "ingest" / "dropped", columns=["row_id", "reason"])
    return sorted(zip(table["row_id"].to_pylist(), table["reason"].to_pylist()))


def test_the_submitted_job_succeeds(submitted):
    result = submitted["result"]
    assert result.returncode == 0 and submitted["job"]["status"] == "SUCCEEDED", \
        result.stdout[-4000:] + result.stderr[-4000:]
    assert "ingest: kept" in result.stdout  # the driver's log is streamed back to the submitter


def test_the_job_ran_on_the_cluster_and_left_it_running(submitted):
    # a driver registered with the cluster's GCS: the job joined through RAY_ADDRESS, started no Ray of its own
    assert submitted["job"]["driver_info"] is not None
    assert submitted["head_alive_after"]  # the head exits if any process of its cluster dies


def test_every_row_is_kept_or_dropped_exactly_once(submitted, small_world):
    world_dir, _ = small_world
    out = submitted["out"]
    written = manifest(out)
    kept = read_pairs_index(out / "ingest")["row_id"].to_pylist()
    dropped = pq.read_table(out / "ingest" / "dropped")["row_id"].to_pylist()
    assert written["rows_in"] == pq.read_table(world_dir / "urls.parquet").num_rows
    assert written["rows_in"] == written["rows_out"] + sum(written["dropped"].values())
    assert sorted(kept + dropped) == sorted(set(kept + dropped)) and len(kept) == written["rows_out"] > 0
    assert all((out / "ingest" / shard).exists() for shard in written["shards"])


def test_the_fetch_guard_reached_the_jobs_download_workers(submitted):
    # Loom's worker env and setup hook, merged with the job's runtime_env (its working_dir)
    assert manifest(submitted["out"])["dropped"].get("too_large", 0) > 0


def test_it_keeps_and_drops_the_same_rows_as_a_local_run(submitted, local):
    job, here = manifest(submitted["out"]), manifest(local)
    assert (job["rows_in"], job["rows_out"], job["dropped"]) == (here["rows_in"], here["rows_out"], here["dropped"])
    assert job["languages"]["kept"] == here["languages"]["kept"]
    for name in ("row_id", "caption"):
        assert (sorted(read_pairs_index(submitted["out"] / "ingest")[name].to_pylist())
                == sorted(read_pairs_index(local / "ingest")[name].to_pylist()))
    assert drops(submitted["out"]) == drops(local)
