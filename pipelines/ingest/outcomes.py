"""Turn img2dataset's per-sample status and error messages into Loom's drop reasons."""
from __future__ import annotations

import re

# What pipelines/ingest/fetch_guard.py refuses, as its messages begin ("private_network: 10.0.0.1 ..."), bare
# or wrapped by urllib ("<urlopen error private_network: ...>"); anchored, since the rest names URLs.
FETCH_GUARD_REASONS = ("private_network", "unsupported_scheme", "too_large", "too_many_pixels", "truncated", "timeout")
_FETCH_GUARD = re.compile(r"(?:<urlopen error )?(" + "|".join(FETCH_GUARD_REASONS) + "):")
_HTTP = re.compile(r"HTTP Error (\d{3})|status code (\d{3})|\b(\d{3}) Client Error|\b(\d{3}) Server Error")


def download_drop_reason(status: str, error_message: str | None) -> str:
    """Map one failed img2dataset row to a short, countable reason."""
    message = (error_message or "").strip()
    lowered = message.lower()
    refused = _FETCH_GUARD.match(message)
    if refused:
        return refused.group(1)
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
    if "x-robots-tag" in lowered:  # img2dataset: "Use of image disallowed by X-Robots-Tag directive"
        return "robots_opt_out"
    if "connection refused" in lowered or "name or service not known" in lowered or "urlopen error" in lowered:
        return "unreachable"
    if status == "failed_to_resize":
        return "decode_error"
    return "download_error"
