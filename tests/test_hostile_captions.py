"""Captions carrying control characters, bidi overrides, private use code points or invisible ones:
dropped at the screen step with their reason when hostile or broken, cleaned when harmless, and the
cleaned caption is the one that reaches the pairs."""
from __future__ import annotations

import contextlib
import http.server
import random
import tarfile
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.ingest import run_ingest
from jobs.render import run_render
from pipelines.ingest import filters
from pipelines.ingest.fetch_guard import FetchPolicy
from pipelines.ingest.shards import read_pairs_index
from pipelines.ingest.sources import clean_caption
from pipelines.shapes_world.draw import draw_scene, encode_jpeg
from pipelines.shapes_world.scenes import make_scene

CONFIG = filters.FilterConfig(languages=("en", "zh"))
GOOD = "Two red circles and a blue square on a white background."
HOSTILE = {  # caption -> the reason it is dropped for
    "Two red circles\x00 on a white background.": "caption_control",  # NUL
    "Two \x1b[31mred\x1b[0m circles on a white background.": "caption_control",  # an ANSI colour sequence
    "Two red circles on a white\x9b background.": "caption_control",  # C1: the one-byte CSI
    "Two red circles on a white background.\x7f": "caption_control",  # DEL
    "Two red circles on a \u202eetihw background.": "caption_bidi",  # right-to-left override
    "Two red circles on a \u2066white\u2069 background.": "caption_bidi",  # left-to-right isolate
    "Two red circles \ue000 on a white background.": "caption_private_use",  # the mark render splits turns at
    "Two red circles on a white background \U0010fffd.": "caption_private_use",  # plane 16
    "\ufeff\u200b \u200b\t\u2060": "caption_empty",  # nothing but invisible characters and spaces
}
# harmless, cleaned: a byte order mark, zero-width spaces, a stray joiner, tabs and newlines, a decomposed é
DIRTY = "\ufeffTwo red\u200b circles\tand a\n\n blue square\u200d beside a caf\u0065\u0301 sign.  "
CLEANED = "Two red circles and a blue square beside a caf\u00e9 sign."


def screened(captions: list[str]) -> pa.Table:
    rows = pa.table({"url": [f"http://example.com/{i}.jpg" for i in range(len(captions))], "caption": captions})
    return filters.screen_rows(rows, FetchPolicy(), CONFIG)


def test_hostile_and_broken_captions_are_dropped_before_download_with_their_reasons():
    out = screened([GOOD, *HOSTILE])
    assert out["drop_reason"].to_pylist() == [None, *HOSTILE.values()]


def test_a_dropped_caption_is_kept_as_it_came_to_show_what_was_refused():
    out = screened(list(HOSTILE))
    assert out["caption"].to_pylist() == list(HOSTILE)


def test_harmless_invisible_characters_and_whitespace_are_cleaned_and_the_caption_kept():
    out = screened([DIRTY, GOOD])
    assert out["drop_reason"].to_pylist() == [None, None]
    assert out["caption"].to_pylist() == [CLEANED, GOOD]
    assert out["lang"].to_pylist() == ["en", "en"]


@pytest.mark.parametrize("caption", [
    "A family \U0001f468\u200d\U0001f469\u200d\U0001f467 beside a red circle.",  # joiners make one emoji
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian: a non-joiner inside a word
    "\u0915\u094d\u200d\u0937",  # Devanagari: a joiner chooses the half form
    "A red circle, \u200fright to left mark kept.",  # a plain bidi mark reorders nothing by itself
])
def test_joiners_and_marks_that_carry_meaning_are_kept(caption):
    assert clean_caption(caption) == caption


def test_a_stray_joiner_or_non_joiner_between_latin_letters_is_removed():
    assert clean_caption("A re\u200dd ci\u200crcle\u200d.") == "A red circle."


def jpeg_of_scene(n: int) -> bytes:
    return encode_jpeg(draw_scene(make_scene(random.Random(f"hostile-captions/{n}"))))


@contextlib.contextmanager
def serving(images: dict[str, bytes]):
    """`images` (path -> JPEG bytes) over HTTP on a loopback port; yields the base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = images.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_loom_ingest_drops_each_hostile_caption_with_its_reason_and_keeps_the_cleaned_one(tmp_path):
    captions = [GOOD, DIRTY, *HOSTILE]
    images = {f"/{i}.jpg": jpeg_of_scene(i) for i in range(len(captions))}
    with serving(images) as base:
        urls = [f"{base}/{i}.jpg" for i in range(len(captions))]
        pq.write_table(pa.table({"url": urls, "caption": captions}), tmp_path / "urls.parquet")
        config = {"ingest": {"sources": [{"path": str(tmp_path / "urls.parquet")}], "allow_private_network": True,
                             "languages": {"en": 1.0}, "image_size": 64, "samples_per_shard": 20,
                             "download_shard_size": 20, "threads": 4, "timeout": 5, "retries": 0}}
        manifest = run_ingest(config, tmp_path / "run", log=lambda *_: None)
    dropped = {row["url"]: (row["stage"], row["reason"], row["caption"])
               for row in pq.read_table(tmp_path / "run" / "ingest" / "dropped").to_pylist()}
    assert dropped == {url: ("screen", reason, caption) for url, (caption, reason) in zip(urls[2:], HOSTILE.items())}
    pairs = read_pairs_index(tmp_path / "run" / "ingest").to_pylist()
    assert sorted((pair["url"], pair["caption"]) for pair in pairs) == [(urls[0], GOOD), (urls[1], CLEANED)]
    with tarfile.open(pairs[0]["shard"]) as tar:  # the caption a trainer reads: the cleaned one
        texts = {member.name: tar.extractfile(member).read().decode() for member in tar if member.name.endswith(".txt")}
    assert sorted(texts.values()) == sorted([GOOD, CLEANED])
    assert manifest["dropped"] == {"caption_bidi": 2, "caption_control": 4, "caption_empty": 1,
                                   "caption_private_use": 2}
    render = run_render({"render": {"datasets": [{"adapter": "pairs", "path": str(tmp_path / "run" / "ingest")}],
                                    "ray": "never"}}, tmp_path / "run", log=lambda *_: None)
    rendered = pq.read_table(tmp_path / "run" / "render" / render["files"][0]).to_pylist()
    assert sorted(row["messages"][1]["content"] for row in rendered) == sorted([GOOD, CLEANED])
