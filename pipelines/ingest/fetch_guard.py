"""Guards on every HTTP fetch of a download worker: no private networks, bounded bytes, time and pixels.

A URL list is untrusted input running on a cluster's network. img2dataset fetches with
`urllib.request.urlopen`, which uses the process-wide opener, so installing a guarded opener
in every Ray worker (`install`, run by Ray's worker setup hook) covers every hop it makes:
- only http and https are fetched, on the first URL and on every redirect: the opener has no
  FTP, file or data handler (each of which would open what the guard never checks), and a
  redirect to another scheme is refused;
- each host is resolved once and the connection goes to an address that was checked, so a
  name cannot resolve to a public address for the check and a private one for the connect;
  an IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by the
  IPv4 address it leads to;
- redirects are followed by the same opener, so each hop is checked again; a redirect's body,
  and an error's, is never read (a server may make it as large as it likes);
- one deadline, `max_seconds`, covers the whole exchange of one `urlopen` call: connect, TLS,
  status line, headers, body and every redirect hop (a server that drips one byte at a time
  never trips a per-read timeout, so every read from the socket is given what is left);
- every byte read from a guarded socket counts against the byte cap, and the body is read
  under it;
- the image header is read before anything decodes it, and an image of more pixels than the
  cap (a decompression bomb: a few KB of PNG that inflate to gigabytes) is refused;
- a JPEG or PNG that stops before its end marker is refused as truncated: decoders fill the
  missing part with grey and carry on, so it would otherwise pass as a good image.
A refusal raises `FetchRefused`, whose message starts with the drop reason.

Not bounded by the deadline: the host name lookup (`getaddrinfo` blocks in C, with the
resolver's own timeouts). Proxies are not used (`*_proxy` variables are ignored): through a
proxy the guard would check the proxy's address, not the one fetched.
"""
from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import urllib.response
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

POLICY_ENV = "LOOM_FETCH_POLICY"
FETCHED_SCHEMES = ("http", "https")
# Status line, headers and chunk framing read beside the body; http.client bounds header lines
# (64 KiB) and their number (100) itself, this only keeps the socket-wide count honest.
HEADER_BYTES = 1024 * 1024

# Special-purpose ranges that Python 3.11's `is_global` passes as public (later Pythons catch some):
# multicast, the IETF protocol block, the 6to4 relay anycast, local-use NAT64, site-local,
# IPv6 documentation and SRv6 SIDs.
_ALSO_NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in (
    "192.0.0.0/24", "192.88.99.0/24", "224.0.0.0/4",
    "64:ff9b:1::/48", "fec0::/10", "ff00::/8", "3fff::/20", "5f00::/16",
))
# IPv6 prefixes whose low 32 bits are the IPv4 address a connection ends up at.
_IPV4_IN_LOW_BITS = tuple(ipaddress.ip_network(n) for n in (
    "::ffff:0:0/96",  # IPv4-mapped
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "64:ff9b::/96",  # NAT64, the well-known prefix
))


class FetchRefused(OSError):
    """A fetch stopped by policy; str() starts with the drop reason (private_network, too_large, ...)."""


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to when it carries one (mapped, translated, NAT64,
    IPv4-compatible, 6to4), else None."""
    if ip.version != 6:
        return None
    if ip.sixtofour:  # 2002:AABB:CCDD::/48 is the 6to4 site of AA.BB.CC.DD
        return ip.sixtofour
    if any(ip in n for n in _IPV4_IN_LOW_BITS) or 1 < int(ip) < 2**32:  # the last: ::a.b.c.d, IPv4-compatible
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def not_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of non-public address `ip` is ('loopback', 'multicast', ...), or None for a public one."""
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "site_local", "private"):
        if getattr(ip, f"is_{kind}", False):
            return kind.replace("_", "-")
    if not ip.is_global or any(ip in n for n in _ALSO_NOT_PUBLIC):
        return "special-purpose"
    return None


@dataclass(frozen=True)
class FetchPolicy:
    """What a download worker may fetch."""

    allow_private_network: bool = False
    allowed_networks: tuple[str, ...] = field(default_factory=tuple)  # CIDRs allowed even when private
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb threshold
    max_seconds: float = 60.0  # for one whole fetch: connect, headers, body, every redirect

    def __post_init__(self):
        try:
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)
        except ValueError as err:
            raise ValueError(f"ingest.allowed_networks: {err}; expected CIDRs like 10.0.0.0/8") from err
        object.__setattr__(self, "_networks", networks)

    def refusal(self, address: str) -> str | None:
        """Why a connection to this IP address is refused, or None.

        An IPv6 address carrying an IPv4 one is judged by the IPv4 address; allowed_networks may
        name either."""
        ip = ipaddress.ip_address(address.split("%")[0])
        inner = embedded_ipv4(ip)
        reached = inner or ip
        if self.allow_private_network or any(a in n for a in (ip, reached) for n in self._networks):
            return None
        kind = not_public(reached)
        if kind is None:
            return None
        shown = f"{ip} (IPv4 {inner} inside)" if inner else str(ip)
        return (f"private_network: {shown} is not a public address ({kind}); "
                "set ingest.allow_private_network or allowed_networks to fetch it")

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


class _Deadline:
    """The end of one whole fetch: every socket operation of it gets at most what is left."""

    def __init__(self, seconds: float, url: str):
        self.seconds, self.url = seconds, url[:200]
        self.at = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def refused(self) -> FetchRefused:
        return FetchRefused(f"timeout: {self.url} took longer than max_seconds {self.seconds} "
                            "(connect, headers, body and redirects together; ingest.max_seconds)")

    def timeout(self, per_operation: float | None) -> float:
        """The socket timeout for the next operation: the caller's, cut to what is left."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.refused()
        return left if per_operation is None else min(per_operation, left)


# The deadline of the fetch this thread is making (img2dataset fetches each URL in a thread of its
# pool), set by the opener for the length of `open`, so that redirect hops share it.
_current = threading.local()


def _per_operation(timeout) -> float | None:
    return None if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout


class _GuardedSocketIO(socket.SocketIO):
    """A response's reader: each read waits at most until the deadline, and counts against the byte
    cap (`max_bytes` of body plus HEADER_BYTES)."""

    def __init__(self, sock, deadline: _Deadline, per_read: float | None, max_bytes: int):
        super().__init__(sock, "rb")
        # as socket.makefile does: urllib closes the socket right after the headers, and the real
        # close must wait until this reader is done with it
        sock._io_refs += 1
        self._deadline, self._per_read, self._max_bytes, self._count = deadline, per_read, max_bytes, 0

    def readinto(self, buffer) -> int | None:
        self._sock.settimeout(self._deadline.timeout(self._per_read))
        try:
            count = super().readinto(buffer)
        except TimeoutError as err:
            if self._deadline.passed():
                raise self._deadline.refused() from err
            raise
        self._count += count or 0
        if self._count > self._max_bytes + HEADER_BYTES:
            raise FetchRefused(f"too_large: response from {self._deadline.url} exceeds max_bytes "
                               f"{self._max_bytes} (and {HEADER_BYTES} bytes of headers)")
        return count


class _GuardedResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline: _Deadline, per_read: float | None, max_bytes: int, **kwargs):
        super().__init__(sock, *args, **kwargs)
        plain, self.fp = self.fp, io.BufferedReader(_GuardedSocketIO(sock, deadline, per_read, max_bytes))
        plain.close()


def _checked_connection(policy: FetchPolicy, deadline: _Deadline):
    """socket.create_connection, but only to resolved addresses the policy allows, and within the deadline."""

    def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for *_, sockaddr in infos:
            reason = policy.refusal(sockaddr[0])
            if reason:
                raise FetchRefused(f"{reason} ({host})")
        per_operation = _per_operation(timeout)
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(deadline.timeout(per_operation))
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                # what is left covers the TLS handshake (OpenSSL counts the socket timeout across the
                # whole handshake) and sending the request
                sock.settimeout(deadline.timeout(per_operation))
                return sock
            except TimeoutError as err:
                sock.close()
                if deadline.passed():
                    raise deadline.refused() from err
                error = err
            except OSError as err:
                sock.close()
                if isinstance(err, FetchRefused):
                    raise
                error = err
        raise error or OSError(f"could not connect to {host}:{port}")

    return create_connection


def _guard(connection: http.client.HTTPConnection, policy: FetchPolicy) -> None:
    """Give a connection the fetch's deadline (or, used outside the opener, one of its own)."""
    deadline = getattr(_current, "deadline", None) or _Deadline(policy.max_seconds, connection.host)
    connection._create_connection = _checked_connection(policy, deadline)
    connection.response_class = functools.partial(
        _GuardedResponse, deadline=deadline, per_read=_per_operation(connection.timeout),
        max_bytes=policy.max_bytes)


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, policy: FetchPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        _guard(self, policy)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, policy: FetchPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        _guard(self, policy)  # TLS wraps the checked socket


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def http_open(self, req):
        return self.do_open(functools.partial(_CheckedHTTPConnection, policy=self.policy), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy, context: ssl.SSLContext | None = None):
        super().__init__(context=context)
        self.policy = policy

    def https_open(self, req):
        return self.do_open(functools.partial(_CheckedHTTPSConnection, policy=self.policy), req,
                            context=self._context)


class _OnlyHTTP(urllib.request.BaseHandler):
    """Refuses every scheme no other handler opens (the opener has only http and https ones)."""

    def unknown_open(self, req):
        raise FetchRefused(f"unsupported_scheme: {req.full_url[:200]}; only {' and '.join(FETCHED_SCHEMES)} "
                           "are fetched")


class _UnreadErrors(urllib.request.HTTPDefaultErrorHandler):
    """An error response becomes HTTPError without its body being read: the status is the reason."""

    def http_error_default(self, req, fp, code, msg, hdrs):
        fp.close()
        raise urllib.error.HTTPError(req.full_url, code, msg, hdrs, io.BytesIO())


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http and https only, without reading the redirect's body."""

    def http_error_302(self, req, fp, code, msg, headers):
        fp.close()  # CPython reads it whole before the hop; a server can make it any size
        location = headers.get("location") or headers.get("uri")
        if location is not None:
            try:
                scheme = urlsplit(location.strip()).scheme.lower()
            except ValueError:
                scheme = "?"
            if scheme and scheme not in FETCHED_SCHEMES:
                raise FetchRefused(f"unsupported_scheme: {req.full_url[:200]} redirects to {location[:200]}; "
                                   f"only {' and '.join(FETCHED_SCHEMES)} are fetched")
        return super().http_error_302(req, io.BytesIO(), code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _BoundedBody(urllib.request.BaseHandler):
    """Reads a successful response's body under the byte cap, and checks its pixel count."""

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
        chunks, size = [], 0
        while True:
            # read1, not read: read(n) allocates n bytes up front and waits for all of them; read1
            # returns what has arrived (each socket read is cut off at the fetch's deadline)
            chunk = response.read1(64 * 1024)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.policy.max_bytes:
                raise FetchRefused(f"too_large: body exceeds max_bytes {self.policy.max_bytes}")
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


class _GuardedOpener(urllib.request.OpenerDirector):
    """An opener whose `open` is one fetch under one deadline, redirect hops included."""

    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def open(self, fullurl, data=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT):
        if getattr(_current, "deadline", None) is not None:  # a redirect hop: the first URL's deadline holds
            return super().open(fullurl, data, timeout)
        url = fullurl if isinstance(fullurl, str) else fullurl.full_url
        _current.deadline = _Deadline(self.policy.max_seconds, url)
        try:
            return super().open(fullurl, data, timeout)
        finally:
            _current.deadline = None


def build_opener(policy: FetchPolicy, context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """An opener that fetches http and https under `policy` and nothing else (`context`: TLS settings,
    e.g. a private CA; default: the system's)."""
    opener = _GuardedOpener(policy)
    # urllib.request.build_opener would add FTP, file and data handlers (and a proxy one) beside these
    for handler in (_OnlyHTTP(), _CheckedHTTPHandler(policy), _CheckedHTTPSHandler(policy, context),
                    _UnreadErrors(), _CheckedRedirects(), urllib.request.HTTPErrorProcessor(), _BoundedBody(policy)):
        opener.add_handler(handler)
    return opener


def install(policy: FetchPolicy | None = None) -> None:
    """Make every urlopen in this process obey `policy` (default: the one in LOOM_FETCH_POLICY)."""
    policy = policy or FetchPolicy.from_env()
    if policy is not None:
        urllib.request.install_opener(build_opener(policy))
