"""The download workers' fetch guard, against a real loopback HTTP server."""
from __future__ import annotations

import http.server
import io
import threading
import time
import urllib.request

import pytest
from PIL import Image

from pipelines.ingest.fetch_guard import FetchPolicy, build_opener
from pipelines.ingest.outcomes import download_drop_reason
from pipelines.shapes_world.faults import png_bomb


def jpeg(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, "JPEG")
    return buffer.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_body(self, body: bytes, kind="image/jpeg", length=True):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path == "/ok.jpg":
            self.send_body(jpeg())
        elif self.path == "/to-private":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{port}/ok.jpg")
            self.end_headers()
        elif self.path == "/to-ok":
            self.send_response(301)
            self.send_header("Location", f"http://127.0.0.1:{port}/ok.jpg")
            self.end_headers()
        elif self.path == "/big-declared":
            self.send_body(b"\xff" * 5000)
        elif self.path == "/big-undeclared":
            self.send_body(b"\xff" * 5000, length=False)
            self.close_connection = True
        elif self.path == "/bomb.png":
            self.send_body(png_bomb(60000, 60000), kind="image/png")
        elif self.path == "/truncated.jpg":  # a JPEG cut short, sent as if whole
            self.send_body(jpeg((64, 64))[:300])
        elif self.path == "/short-body.jpg":  # the connection closes before the declared length
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "3000")
            self.end_headers()
            self.wfile.write(jpeg((64, 64))[:500])
            self.close_connection = True
        elif self.path == "/corrupt.jpg":  # JPEG markers around noise
            self.send_body(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
        elif self.path == "/error-page.jpg":  # an HTML error page served with 200
            self.send_body(b"<!DOCTYPE html><html><body>Not found</body></html>", kind="text/html")
        elif self.path == "/server-error.jpg":
            self.send_error(500)
        elif self.path == "/slow":  # a byte every 50 ms for 30 s, or until the client hangs up
            self.send_response(200)
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(600):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            self.send_error(404)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # img2dataset opens `threads` connections at once: the default backlog of 5 drops SYNs, and a SYN
    # sent again 1 s later would spend the whole max_seconds of a fetch before it began
    request_queue_size = 64


@pytest.fixture(scope="module")
def server():
    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


LOOPBACK_ONLY = FetchPolicy(allowed_networks=("127.0.0.1/32",), max_bytes=4000, max_pixels=10_000_000, max_seconds=1.0)


def fetch(url: str, policy: FetchPolicy = LOOPBACK_ONLY) -> bytes:
    """What img2dataset does with the process-wide opener: urlopen, then read."""
    with build_opener(policy).open(url, timeout=5) as response:
        return response.read()


def refusal(url: str, policy: FetchPolicy = LOOPBACK_ONLY) -> str:
    with pytest.raises(Exception) as raised:
        fetch(url, policy)
    return download_drop_reason("failed_to_download", str(raised.value))


def test_an_allowed_address_is_fetched_in_full(server):
    assert Image.open(io.BytesIO(fetch(f"{server}/ok.jpg"))).size == (40, 30)


def test_a_private_address_is_refused_by_default(server):
    assert refusal(f"{server}/ok.jpg", FetchPolicy()) == "private_network"


def test_a_redirect_to_a_private_address_is_refused_at_that_hop(server):
    assert refusal(f"{server}/to-private") == "private_network"


def test_a_redirect_to_an_allowed_address_is_followed(server):
    assert fetch(f"{server}/to-ok") == fetch(f"{server}/ok.jpg")


def test_localhost_names_resolve_to_loopback_and_are_refused(server):
    port = server.rsplit(":", 1)[1]
    assert refusal(f"http://localhost:{port}/ok.jpg", FetchPolicy()) == "private_network"


def test_a_truncated_image_is_refused_before_a_decoder_greys_in_the_rest(server):
    assert refusal(f"{server}/truncated.jpg") == "truncated"
    assert refusal(f"{server}/short-body.jpg") == "truncated"
    assert fetch(f"{server}/ok.jpg") == jpeg()


@pytest.mark.parametrize("path", ["/big-declared", "/big-undeclared"])
def test_bodies_over_the_byte_cap_are_refused(server, path):
    assert refusal(f"{server}{path}") == "too_large"


def test_a_decompression_bomb_is_refused_from_its_header(server):
    assert refusal(f"{server}/bomb.png") == "too_many_pixels"


def test_a_server_that_drips_bytes_is_cut_off_at_the_deadline(server):
    started = time.monotonic()
    assert refusal(f"{server}/slow") == "timeout"
    assert time.monotonic() - started < LOOPBACK_ONLY.max_seconds + 1.0  # not when the server stops, 30 s on


def test_errors_pass_through_untouched(server):
    assert refusal(f"{server}/missing.jpg") == "http_404"


def test_installing_makes_plain_urlopen_obey_the_policy(server):
    from pipelines.ingest import fetch_guard

    previous = urllib.request._opener
    try:
        fetch_guard.install(FetchPolicy())
        with pytest.raises(OSError, match="private_network"):
            urllib.request.urlopen(f"{server}/ok.jpg", timeout=5)
    finally:
        urllib.request.install_opener(previous)


def test_ingest_workers_apply_the_guard_on_every_hop(server, tmp_path):
    """A messy URL list through a real job: the policy reaches img2dataset inside the Ray workers and
    every bad response lands in dropped.parquet with its reason; the job finishes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.ingest import run_ingest

    urls = {f"{server}/ok.jpg": "kept", f"{server}/to-private": "private_network",
            f"{server}/bomb.png": "too_many_pixels", f"{server}/big-declared": "too_large",
            f"{server}/big-undeclared": "too_large", f"{server}/truncated.jpg": "truncated",
            f"{server}/short-body.jpg": "truncated", f"{server}/corrupt.jpg": "not_image",
            f"{server}/error-page.jpg": "not_image", f"{server}/server-error.jpg": "http_500",
            f"{server}/gone.jpg": "http_404", f"{server}/slow": "timeout",
            "http://10.255.255.1/a.jpg": "private_network", "not a url": "malformed_url"}
    pq.write_table(pa.table({"url": list(urls), "caption": ["A red rectangle on a plain white background."] * len(urls)}),
                   tmp_path / "urls.parquet")
    config = {"ingest": {
        "sources": [{"path": str(tmp_path / "urls.parquet")}], "allowed_networks": ["127.0.0.1/32"],
        "max_bytes": 4000, "max_pixels": 10_000_000, "max_seconds": 1.0, "languages": {"en": 1.0},
        "filters": {"min_side": 16}, "image_size": 64, "timeout": 5, "retries": 0,
    }}
    manifest = run_ingest(config, tmp_path / "run", log=lambda *_: None)
    dropped = {r["url"]: r["reason"] for r in pq.read_table(tmp_path / "run" / "ingest" / "dropped").to_pylist()}
    assert dropped == {url: reason for url, reason in urls.items() if reason != "kept"}
    assert manifest["rows_out"] == 1


def test_a_bad_network_in_the_config_is_refused_before_any_work(tmp_path):
    from jobs.config import ConfigError
    from jobs.ingest import run_ingest

    with pytest.raises(ConfigError, match="allowed_networks"):
        run_ingest({"ingest": {"sources": [{"path": "x.parquet"}], "allowed_networks": ["10.0.0.0/99"]}}, tmp_path)
    assert not (tmp_path / "ingest").exists()
