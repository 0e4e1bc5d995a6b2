"""Guards on every HTTP fetch of a download worker: no private networks, bounded bytes, time and pixels.

A URL list is untrusted input running on a cluster's network. img2dataset fetches with
`urllib.request.urlopen`, which uses the process-wide opener, so installing a guarded opener
in every Ray worker (`install`, run by Ray's worker setup hook) covers every hop it makes:
- each host is resolved once and the connection goes to an address that was checked, so a
  name cannot resolve to a public address for the check and a private one for the connect;
- redirects are followed by the same opener, so each hop is checked again;
- the body is read with a byte cap and an overall deadline (a server that drips one byte at a
  time never trips a per-read timeout);
- the image header is read before anything decodes it, and an image of more pixels than the
  cap (a decompression bomb: a few KB of PNG that inflate to gigabytes) is refused;
- a JPEG or PNG that stops before its end marker is refused as truncated: decoders fill the
  missing part with grey and carry on, so it would otherwise pass as a good image.
A refusal raises `FetchRefused`, whose message starts with the drop reason.
"""
from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import json
import os
import socket
import time
import urllib.request
import urllib.response
from dataclasses import asdict, dataclass, field

POLICY_ENV = "LOOM_FETCH_POLICY"


class FetchRefused(OSError):
    """A fetch stopped by policy; str() starts with the drop reason (private_network, too_large, ...)."""


@dataclass(frozen=True)
class FetchPolicy:
    """What a download worker may fetch."""

    allow_private_network: bool = False
    allowed_networks: tuple[str, ...] = field(default_factory=tuple)  # CIDRs allowed even when private
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb threshold
    max_seconds: float = 60.0  # for one whole response body

    def __post_init__(self):
        try:
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)
        except ValueError as err:
            raise ValueError(f"ingest.allowed_networks: {err}; expected CIDRs like 10.0.0.0/8") from err
        object.__setattr__(self, "_networks", networks)

    def refusal(self, address: str) -> str | None:
        """Why a connection to this IP address is refused, or None."""
        ip = ipaddress.ip_address(address.split("%")[0])
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        if self.allow_private_network or ip.is_global or any(ip in n for n in self._networks):
            return None
        return f"private_network: {ip} is not a public address (set ingest.allow_private_network or allowed_networks)"

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "FetchPolicy | None":
        raw = os.environ.get(POLICY_ENV)
        if not raw:
            return None
        values = json.loads(raw)
        values["allowed_networks"] = tuple(values["allowed_networks"])
        return cls(**values)


def _checked_connection(policy: FetchPolicy):
    """socket.create_connection, but only to resolved addresses the policy allows."""

    def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for *_, sockaddr in infos:
            reason = policy.refusal(sockaddr[0])
            if reason:
                raise FetchRefused(f"{reason} ({host})")
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as err:
                error = err
                sock.close()
        raise error or OSError(f"could not connect to {host}:{port}")

    return create_connection


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, policy: FetchPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _checked_connection(policy)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, policy: FetchPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _checked_connection(policy)  # TLS wraps the checked socket


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def http_open(self, req):
        return self.do_open(functools.partial(_CheckedHTTPConnection, policy=self.policy), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def https_open(self, req):
        return self.do_open(functools.partial(_CheckedHTTPSConnection, policy=self.policy), req,
                            context=self._context)


class _BoundedBody(urllib.request.BaseHandler):
    """Reads a successful response's body under the byte cap and deadline, and checks its pixel count."""

    handler_order = 1001  # after HTTPErrorProcessor: error and redirect responses are not bodies to keep

    def __init__(self, policy: FetchPolicy):
        self.policy = policy

    def http_response(self, request, response):
        if getattr(response, "_loom_bounded", False) or not 200 <= response.status < 300:
            return response
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise FetchRefused(f"too_large: Content-Length {declared} exceeds max_bytes {self.policy.max_bytes}")
        body = self._read(response)
        self._check_pixels(body)
        self._check_complete(body)
        bounded = urllib.response.addinfourl(io.BytesIO(body), response.headers, response.url, response.status)
        bounded._loom_bounded = True
        return bounded

    https_response = http_response

    def _read(self, response) -> bytes:
        deadline = time.monotonic() + self.policy.max_seconds
        chunks, size = [], 0
        while True:
            # read1, not read: read(n) waits for all n bytes, so a server dripping a byte at a time
            # would hold the worker until it stopped; read1 returns what has arrived, and the
            # deadline is checked after every arrival
            chunk = response.read1(64 * 1024)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.policy.max_bytes:
                raise FetchRefused(f"too_large: body exceeds max_bytes {self.policy.max_bytes}")
            if time.monotonic() > deadline:
                raise FetchRefused(f"timeout: body took longer than max_seconds {self.policy.max_seconds}")
            chunks.append(chunk)

    @staticmethod
    def _check_complete(body: bytes) -> None:
        tail = body[-64:]  # end markers may be followed by a little padding
        if body.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
            raise FetchRefused(f"truncated: JPEG of {len(body)} bytes has no end-of-image marker")
        if body.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" not in tail:
            raise FetchRefused(f"truncated: PNG of {len(body)} bytes has no IEND chunk")

    def _check_pixels(self, body: bytes) -> None:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(body)) as image:  # reads the header only; nothing is decoded
                width, height = image.size
        except Image.DecompressionBombError as err:
            raise FetchRefused(f"too_many_pixels: {err}") from err
        except Exception:
            return  # not an image Pillow knows: the decoder downstream records why
        if width * height > self.policy.max_pixels:
            raise FetchRefused(f"too_many_pixels: {width}x{height} exceeds max_pixels {self.policy.max_pixels}")


def build_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_CheckedHTTPHandler(policy), _CheckedHTTPSHandler(policy), _BoundedBody(policy))


def install(policy: FetchPolicy | None = None) -> None:
    """Make every urlopen in this process obey `policy` (default: the one in LOOM_FETCH_POLICY)."""
    policy = policy or FetchPolicy.from_env()
    if policy is not None:
        urllib.request.install_opener(build_opener(policy))
