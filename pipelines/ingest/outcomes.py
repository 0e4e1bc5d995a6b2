"""Turn img2dataset's per-sample status and error messages into Loom's drop reasons."""
from __future__ import annotations

import re

_HTTP = re.compile(r"HTTP Error (\d{3})|status code (\d{3})|\b(\d{3}) Client Error|\b(\d{3}) Server Error")


def download_drop_reason(status: str, error_message: str | None) -> str:
    """Map one failed img2dataset row to a short, countable reason."""
    message = (error_message or "").strip()
    lowered = message.lower()
    for reason in ("private_network", "too_large", "too_many_pixels", "truncated"):  # Loom's fetch guard refused it
        if f"{reason}:" in lowered:
            return reason
    match = _HTTP.search(message)
    if match:
        return f"http_{next(g for g in match.groups() if g)}"
    if "incompleteread" in lowered or "incomplete read" in lowered:  # the body ended before its Content-Length
        return "truncated"
    if "timed out" in lowered or "timeout" in lowered:
        return "timeout"
    if "cannot identify image" in lowered or "image decoding error" in lowered or "not an image" in lowered:
        return "not_image"
    if "decompression bomb" in lowered or "exceeds limit" in lowered:
        return "too_many_pixels"
    if "hash mismatch" in lowered:
        return "hash_mismatch"
    if "x-robots-tag" in lowered:
        return "opted_out"
    if "connection refused" in lowered or "name or service not known" in lowered or "urlopen error" in lowered:
        return "unreachable"
    if status == "failed_to_resize":
        return "decode_error"
    return "download_error"
