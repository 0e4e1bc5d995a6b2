"""Publishers' opt-outs: an image served with an X-Robots-Tag directive of DownloadConfig's list is
not kept, and is dropped as 'robots_opt_out'; through img2dataset's downloader, on a loopback server."""
from __future__ import annotations

import http.server
import io
import threading

import pyarrow as pa
import pytest
from PIL import Image

from pipelines.ingest.download import DownloadConfig, download_shard, read_shard
from pipelines.ingest.outcomes import download_drop_reason

# path -> the X-Robots-Tag header it is served with
ROBOTS_TAGS = {
    "/plain.jpg": None,
    "/noai.jpg": "noai",
    "/noimageai.jpg": "noimageai",
    "/noindex-nofollow.jpg": "noindex, nofollow",
    # addressed to another crawler: Loom sends no user-agent token, so img2dataset applies only
    # directives addressed to everyone
    "/otherbot.jpg": "otherbot: noindex",
    "/nofollow.jpg": "nofollow",  # not an opt-out of use
}


class TaggedImages(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path not in ROBOTS_TAGS:
            self.send_error(404)
            return
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), "blue").save(buffer, "JPEG")
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(buffer.getvalue())))
        if ROBOTS_TAGS[self.path]:
            self.send_header("X-Robots-Tag", ROBOTS_TAGS[self.path])
        self.end_headers()
        self.wfile.write(buffer.getvalue())


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TaggedImages)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def reasons(server: str, folder, config: DownloadConfig) -> dict[str, str | None]:
    """path -> the drop reason of its row after img2dataset fetched the shard (None: kept)."""
    paths = list(ROBOTS_TAGS)
    rows = pa.table({"row_id": [f"t:{i}" for i in range(len(paths))], "source": ["t"] * len(paths),
                     "lang": ["en"] * len(paths), "caption": ["A blue rectangle."] * len(paths),
                     "url": [server + p for p in paths]})
    download_shard(rows, 0, folder, config)
    fetched = read_shard(folder, 0).to_pylist()
    return {row["url"][len(server):]: None if row["status"] == "success"
            else download_drop_reason(row["status"], row["error_message"]) for row in fetched}


def test_images_opted_out_by_x_robots_tag_are_dropped_as_robots_opt_out(server, tmp_path):
    assert reasons(server, tmp_path, DownloadConfig(threads=2, retries=0)) == {
        "/plain.jpg": None, "/noai.jpg": "robots_opt_out", "/noimageai.jpg": "robots_opt_out",
        "/noindex-nofollow.jpg": "robots_opt_out", "/otherbot.jpg": None, "/nofollow.jpg": None,
    }


def test_the_default_directives_are_img2dataset_s():
    assert DownloadConfig().disallowed_header_directives == ("noai", "noimageai", "noindex", "noimageindex")


def test_an_empty_directive_list_turns_the_check_off(server, tmp_path):
    config = DownloadConfig(threads=2, retries=0, disallowed_header_directives=())
    assert reasons(server, tmp_path, config) == dict.fromkeys(ROBOTS_TAGS)


def test_img2dataset_s_refusal_message_maps_to_robots_opt_out():
    assert download_drop_reason("failed_to_download",
                                "Use of image disallowed by X-Robots-Tag directive") == "robots_opt_out"
