"""How the web misbehaves, served by the shapes world's loopback server under /faults/.

A messy world (`loom demo-data OUT --messy`) points some URL rows here so that ingest meets
what a real crawl meets: servers that drip bytes or stall, bodies cut short, bodies far over
any sensible size, decompression bombs, redirects into private networks and server errors.
A fault URL is /faults/<fault>/<anything>; the fault decides the response.
"""
from __future__ import annotations

import struct
import time
import zlib
from http.server import BaseHTTPRequestHandler

# Long enough to outlast any per-image deadline a test or the messy config sets (seconds); the
# server stops sooner when the client hangs up.
SLOW_SECONDS = 30.0
DRIP_INTERVAL = 0.1
# Declared but never sent in full: over the default per-image byte cap (32 MiB).
OVERSIZED_DECLARED_BYTES = 64 * 1024 * 1024
BOMB_SIDE = 60_000  # a 60000 x 60000 PNG header: 3.6 gigapixels claimed in a few KB


def png_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A small PNG whose header claims width x height and whose data starts as deflated zeros:
    kilobytes on the wire, gigabytes once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    zeros = zlib.compress(b"\x00" * 1_000_000, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zeros) + chunk(b"IEND", b"")


def corrupt_jpeg(index: int) -> bytes:
    """JPEG start and end markers around bytes that are no JPEG stream."""
    noise = bytes((i * 37 + index * 11) % 256 for i in range(1024))
    return b"\xff\xd8\xff\xe0" + noise + b"\xff\xd9"


def _send_head(handler: BaseHTTPRequestHandler, status: int, kind: str, length: int | None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    if length is not None:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()


def _slow(handler: BaseHTTPRequestHandler) -> None:
    """A 200 whose body arrives a byte at a time, for longer than any deadline."""
    _send_head(handler, 200, "image/jpeg", None)
    deadline = time.monotonic() + SLOW_SECONDS
    while time.monotonic() < deadline:
        handler.wfile.write(b"\xff")
        handler.wfile.flush()
        time.sleep(DRIP_INTERVAL)


def _stall(handler: BaseHTTPRequestHandler) -> None:
    """Headers, then silence: the client's read timeout has to end it."""
    _send_head(handler, 200, "image/jpeg", 4096)
    handler.wfile.flush()
    time.sleep(SLOW_SECONDS)


def _truncated(handler: BaseHTTPRequestHandler) -> None:
    """The connection closes after 500 of the 3000 bytes the header promised."""
    _send_head(handler, 200, "image/jpeg", 3000)
    handler.wfile.write(corrupt_jpeg(0)[:500])


def _oversized(handler: BaseHTTPRequestHandler) -> None:
    """A body declared (and streamed) far over the byte cap."""
    _send_head(handler, 200, "image/jpeg", OVERSIZED_DECLARED_BYTES)
    block = b"\xff" * 65536
    for _ in range(OVERSIZED_DECLARED_BYTES // len(block)):
        handler.wfile.write(block)


def _bomb(handler: BaseHTTPRequestHandler) -> None:
    body = png_bomb()
    _send_head(handler, 200, "image/png", len(body))
    handler.wfile.write(body)


def _redirect_private(handler: BaseHTTPRequestHandler) -> None:
    """A redirect to 127.0.0.2, loopback but outside 127.0.0.1/32: the hop a fetch guard must check.
    Nothing listens there (the server binds 127.0.0.1), so even an unguarded fetch stays on this machine."""
    handler.send_response(302)
    handler.send_header("Location", f"http://127.0.0.2:{handler.server.server_address[1]}/images/redirected.jpg")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _server_error(handler: BaseHTTPRequestHandler) -> None:
    handler.send_error(500, "Internal Server Error")


FAULTS = {
    "slow": _slow,
    "stall": _stall,
    "truncated": _truncated,
    "oversized": _oversized,
    "bomb": _bomb,
    "redirect-private": _redirect_private,
    "server-error": _server_error,
}


def serve_fault(handler: BaseHTTPRequestHandler, path: str) -> bool:
    """Answer a /faults/<fault>/... request; False when `path` names no fault."""
    parts = path.split("?")[0].split("/")
    if len(parts) < 3 or parts[1] != "faults" or parts[2] not in FAULTS:
        return False
    handler.close_connection = True
    try:
        FAULTS[parts[2]](handler)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up, as it should
    return True
