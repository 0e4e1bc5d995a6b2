"""Hostile servers against the download workers' fetch guard: other schemes, huge redirect and
error bodies, dripped headers, stalled handshakes, IPv4 hidden in IPv6. Loopback only."""
from __future__ import annotations

import contextlib
import datetime
import http.server
import io
import ipaddress
import select
import socket
import ssl
import threading
import time
import tracemalloc
import urllib.error

import pytest
from PIL import Image

from pipelines.ingest.fetch_guard import FetchPolicy, build_opener
from pipelines.ingest.outcomes import download_drop_reason

MiB = 1024 * 1024
HUGE = 200 * MiB  # what a hostile redirect or error page declares, and sends while anyone reads
BLOCK = b"\0" * MiB
DRIP_SECONDS = 0.25  # between the bytes of a dripped status line: far inside any per-read timeout
POLICY = FetchPolicy(allowed_networks=("127.0.0.1/32",), max_bytes=4000, max_pixels=10_000_000, max_seconds=1.0)
PER_READ_TIMEOUT = 5  # what img2dataset gives urlopen: five times the whole fetch's deadline


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, "JPEG")
    return buffer.getvalue()


class HostileHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def redirect(self, location: str, code: int = 302) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def flood(self, code: int, location: str | None = None) -> None:
        """A response declaring a HUGE body, sent for as long as the client reads; the bytes the
        socket took are recorded in server.written."""
        self.send_response(code)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(HUGE))
        self.end_headers()
        written = 0
        try:
            while written < HUGE:
                self.wfile.write(BLOCK)
                written += len(BLOCK)
        except OSError:
            pass
        finally:
            self.server.written[self.path] = written
            self.server.finished[self.path].set()

    def drip(self, data: bytes, interval: float) -> None:
        try:
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass

    def do_GET(self):
        self.close_connection = True
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/ok.jpg":
            body = jpeg()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/opt-out.jpg":  # the publisher opts the image out of AI training
            body = jpeg()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("X-Robots-Tag", "noai, noimageai")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/to-ftp":
            self.redirect(f"ftp://127.0.0.1:{self.server.ftp_port}/image.jpg")
        elif self.path == "/to-file":
            self.redirect("file:///etc/hostname")
        elif self.path == "/to-data":
            self.redirect("data:image/jpeg;base64,/9j/4AAQSkZJRg==", code=301)
        elif self.path == "/huge-redirect":
            self.flood(302, location=f"{base}/ok.jpg")
        elif self.path == "/huge-error":
            self.flood(404)
        elif self.path == "/drip-headers":  # the status line and headers a byte at a time, for 30 s
            self.drip(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + b"X-Padding: x\r\n" * 8, DRIP_SECONDS)
        elif self.path == "/drip-body":  # prompt headers, then a body a byte every 50 ms, for 30 s
            self.send_response(200)
            self.end_headers()
            self.drip(b"x" * 600, 0.05)
        elif self.path.startswith("/pause-redirect/"):  # each hop answers in 0.6 s, well inside the per-read timeout
            time.sleep(0.6)
            hops = int(self.path.rsplit("/", 1)[1])
            self.redirect(f"{base}/pause-redirect/{hops - 1}" if hops > 1 else f"{base}/ok.jpg")
        else:
            self.send_error(404)


class HostileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 drops SYNs of concurrent fetches; a resent SYN costs 1 s of max_seconds

    def __init__(self, ftp_port: int, tls: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), HostileHandler)
        if tls:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.ftp_port = ftp_port
        self.written: dict[str, int] = {}
        self.finished = {path: threading.Event() for path in ("/huge-redirect", "/huge-error")}

    def handle_error(self, request, client_address):
        pass  # clients hanging up on hostile responses is the point


@contextlib.contextmanager
def serving(server: HostileServer):
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def listener():
    """A TCP port that listens and never answers: an FTP server that stays silent, a peer that stalls."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as sock:
        yield sock


def connections_made(sock: socket.socket) -> bool:
    """Whether anyone connected: a completed connection waits in the backlog, readable, unaccepted."""
    readable, _, _ = select.select([sock], [], [], 0.2)
    return bool(readable)


@pytest.fixture
def server(listener):
    with serving(HostileServer(ftp_port=listener.getsockname()[1])) as httpd:
        yield httpd


def url(server: HostileServer, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.server_address[1]}{path}"


def fetch(address: str, policy: FetchPolicy = POLICY, context: ssl.SSLContext | None = None) -> bytes:
    """What img2dataset does with the process-wide opener: urlopen, then read."""
    with build_opener(policy, context).open(address, timeout=PER_READ_TIMEOUT) as response:
        return response.read()


def refusal(address: str, policy: FetchPolicy = POLICY, context: ssl.SSLContext | None = None) -> tuple[str, str]:
    """(drop reason, message) of a fetch that must fail."""
    with pytest.raises(Exception) as raised:
        fetch(address, policy, context)
    return download_drop_reason("failed_to_download", str(raised.value)), str(raised.value)


# --- schemes: http and https only, on every hop ---

def test_a_redirect_to_ftp_is_refused_and_nothing_connects(server, listener):
    reason, message = refusal(url(server, "/to-ftp"))
    assert reason == "unsupported_scheme" and message.startswith("unsupported_scheme: ")
    assert f"ftp://127.0.0.1:{listener.getsockname()[1]}" in message
    assert not connections_made(listener)


@pytest.mark.parametrize("path", ["/to-file", "/to-data"])
def test_redirects_to_file_and_data_are_refused_as_unsupported_schemes(server, path):
    reason, message = refusal(url(server, path))
    assert reason == "unsupported_scheme", message


def test_a_first_url_of_another_scheme_opens_nothing(listener):
    port = listener.getsockname()[1]
    assert refusal(f"ftp://127.0.0.1:{port}/image.jpg")[0] == "unsupported_scheme"
    assert refusal("file:///etc/hostname")[0] == "unsupported_scheme"
    assert refusal("data:image/jpeg;base64,/9j/4AAQSkZJRg==")[0] == "unsupported_scheme"
    assert not connections_made(listener)


# --- bytes: no response is read past the cap, redirects and errors included ---

def test_a_redirect_body_is_never_read(server):
    tracemalloc.start()
    try:
        body = fetch(url(server, "/huge-redirect"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body == jpeg()  # the hop is followed
    assert peak < 8 * MiB  # CPython reads a redirect's body whole: 200 MiB here
    assert server.finished["/huge-redirect"].wait(10)
    assert server.written["/huge-redirect"] < 32 * MiB  # nobody read it, so the server could not send it


def test_an_error_body_is_never_read(server):
    with pytest.raises(urllib.error.HTTPError) as raised:
        fetch(url(server, "/huge-error"))
    assert download_drop_reason("failed_to_download", str(raised.value)) == "http_404"
    assert raised.value.read() == b""
    assert server.finished["/huge-error"].wait(10)
    assert server.written["/huge-error"] < 32 * MiB


# --- time: one deadline for the whole fetch ---

def timed_refusal(address: str, **kwargs) -> tuple[str, float]:
    started = time.monotonic()
    reason, _ = refusal(address, **kwargs)
    return reason, time.monotonic() - started


def test_headers_dripped_a_byte_at_a_time_are_cut_off_at_the_deadline(server):
    reason, seconds = timed_refusal(url(server, "/drip-headers"))
    assert reason == "timeout"
    assert POLICY.max_seconds <= seconds < POLICY.max_seconds + 0.5  # not when the server stops, 30 s on


def test_a_dripped_body_is_cut_off_at_the_deadline(server):
    reason, seconds = timed_refusal(url(server, "/drip-body"))
    assert reason == "timeout"
    assert seconds < POLICY.max_seconds + 0.5


def test_redirect_hops_share_one_deadline(server):
    assert fetch(url(server, "/pause-redirect/1")) == jpeg()  # 0.6 s: inside the deadline
    reason, seconds = timed_refusal(url(server, "/pause-redirect/3"))  # 0.6 s a hop, each one fine alone
    assert reason == "timeout"
    assert seconds < POLICY.max_seconds + 0.5


def test_a_peer_that_never_answers_is_cut_off_at_the_deadline_not_the_read_timeout(listener):
    reason, seconds = timed_refusal(f"http://127.0.0.1:{listener.getsockname()[1]}/image.jpg")
    assert reason == "timeout"
    assert seconds < POLICY.max_seconds + 0.5  # the per-read timeout is PER_READ_TIMEOUT


def test_a_stalled_tls_handshake_is_cut_off_at_the_deadline(listener):
    reason, seconds = timed_refusal(f"https://127.0.0.1:{listener.getsockname()[1]}/image.jpg")
    assert reason == "timeout"
    assert seconds < POLICY.max_seconds + 0.5


# --- addresses: IPv4 inside IPv6, and the ranges Python 3.11 calls global ---

@pytest.mark.parametrize("address", [
    "::127.0.0.1",  # IPv4-compatible
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT)
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 to loopback, to cloud metadata
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
    "2002:7f00:1::", "2002:a9fe:a9fe::1",  # 6to4 of loopback, of cloud metadata
    "224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1",  # multicast, IPv4 and IPv6
    "255.255.255.255", "240.0.0.1", "0.0.0.0", "::", "0.1.2.3",  # broadcast, reserved, unspecified
    "100.64.0.1", "192.0.0.8", "192.88.99.1", "fec0::1", "2001:db8::1",  # shared, IETF, 6to4 relay, site-local, docs
])
def test_non_public_addresses_are_refused_however_they_are_written(address):
    assert FetchPolicy().refusal(address).startswith("private_network: ")


@pytest.mark.parametrize("address", [
    "93.184.215.14", "2606:4700:4700::1111", "::ffff:93.184.215.14", "64:ff9b::5db8:d70e", "2002:5db8:d70e::1",
])
def test_public_addresses_pass_however_they_are_written(address):
    assert FetchPolicy().refusal(address) is None


def test_a_refusal_names_the_ipv4_address_inside():
    assert "64:ff9b::a9fe:a9fe (IPv4 169.254.169.254 inside)" in FetchPolicy().refusal("64:ff9b::a9fe:a9fe")


def test_allowed_networks_and_allow_private_network_still_win():
    loopback = FetchPolicy(allowed_networks=("127.0.0.1/32",))
    assert loopback.refusal("::ffff:127.0.0.1") is None and loopback.refusal("64:ff9b::7f00:1") is None
    assert loopback.refusal("127.0.0.2") is not None
    assert FetchPolicy(allowed_networks=("224.0.0.0/4",)).refusal("224.0.0.1") is None
    everything = FetchPolicy(allow_private_network=True)
    assert all(everything.refusal(a) is None for a in ("224.0.0.1", "::1", "64:ff9b::a9fe:a9fe", "10.0.0.1"))


# --- https: the same guard over TLS ---

@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made now: (cert file, key file)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return str(folder / "cert.pem"), str(folder / "key.pem")


@pytest.fixture
def tls_server(certificate, listener):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with serving(HostileServer(ftp_port=listener.getsockname()[1], tls=context)) as httpd:
        yield httpd, ssl.create_default_context(cafile=certificate[0])


def test_https_is_fetched_through_the_guard(tls_server):
    httpd, trust = tls_server
    assert fetch(url(httpd, "/ok.jpg", "https"), context=trust) == jpeg()
    assert refusal(url(httpd, "/ok.jpg", "https"), FetchPolicy(), trust)[0] == "private_network"


def test_https_headers_dripped_are_cut_off_at_the_deadline(tls_server):
    httpd, trust = tls_server
    reason, seconds = timed_refusal(url(httpd, "/drip-headers", "https"), context=trust)
    assert reason == "timeout"
    assert seconds < POLICY.max_seconds + 0.5


def test_an_https_redirect_to_ftp_is_refused(tls_server, listener):
    httpd, trust = tls_server
    assert refusal(url(httpd, "/to-ftp", "https"), context=trust)[0] == "unsupported_scheme"
    assert not connections_made(listener)


# --- through `loom ingest`: the refusals reach the dropped rows ---

def dropped_reasons(run) -> dict[str, str]:
    import pyarrow.parquet as pq

    table = pq.read_table(run / "ingest" / "dropped", columns=["url", "reason"])
    return {row["url"]: row["reason"] for row in table.to_pylist()}


def test_loom_ingest_drops_hostile_rows_with_their_reasons(server, listener, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from jobs.cli import main

    expected = {url(server, "/to-ftp"): "unsupported_scheme", url(server, "/to-file"): "unsupported_scheme",
                url(server, "/drip-headers"): "timeout", url(server, "/huge-error"): "http_404",
                url(server, "/opt-out.jpg"): "robots_opt_out"}
    urls = [url(server, "/ok.jpg"), *expected]
    pq.write_table(pa.table({"url": urls, "caption": ["A red rectangle on a plain white background."] * len(urls)}),
                   tmp_path / "urls.parquet")
    config = {"ingest": {
        "sources": [{"path": str(tmp_path / "urls.parquet")}], "allowed_networks": ["127.0.0.1/32"],
        "max_bytes": 4000, "max_seconds": 1.0, "languages": {"en": 1.0}, "filters": {"min_side": 16},
        "image_size": 64, "timeout": PER_READ_TIMEOUT, "retries": 0, "threads": 4,
    }}
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(config))
    assert main(["ingest", str(tmp_path / "ingest.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert dropped_reasons(tmp_path / "run") == expected  # ok.jpg kept; each hostile row dropped with its reason
    assert not connections_made(listener)
