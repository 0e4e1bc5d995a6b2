"""A loopback HTTP server for the shapes world, so ingestion runs its real download path."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .faults import serve_fault


class PortInUseError(OSError):
    """The port a demo world's URLs point at is taken by another process."""


class _WorldHandler(SimpleHTTPRequestHandler):
    """Files under the root, and the misbehaving responses of faults.py under /faults/."""

    # Thousands of image requests per ingest would otherwise each print a line.
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not serve_fault(self, self.path):
            super().do_GET()


class _WorldServer(ThreadingHTTPServer):
    daemon_threads = True
    # img2dataset opens `threads` connections at once per shard; the default backlog of 5 drops the rest,
    # whose retry a second later would count against the fetch guard's one deadline (max_seconds)
    request_queue_size = 64

    def handle_error(self, request, client_address) -> None:
        # A client that stops reading (a fetch guard refusing a body, a timeout) is not the
        # server's error; anything else is still printed.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ShapesServer:
    """Serves `root_dir` on 127.0.0.1:`port` from a daemon thread while the `with` block runs.

    port=0 takes any free port; `.port` and `.url` then say which.
    """

    def __init__(self, root_dir: str | os.PathLike, port: int = 0) -> None:
        self.root_dir = Path(root_dir)
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ShapesServer":
        if self._server is not None:
            return self
        if not self.root_dir.is_dir():
            raise FileNotFoundError(f"ShapesServer: {self.root_dir} is not a directory to serve")
        handler = functools.partial(_WorldHandler, directory=str(self.root_dir))
        try:
            self._server = _WorldServer(("127.0.0.1", self.port), handler)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    errno.EADDRINUSE,
                    f"port {self.port} on 127.0.0.1 is already in use, so {self.root_dir} cannot be served there",
                ) from error
            raise
        self.port = self._server.server_address[1]
        # A short poll interval lets `stop` return promptly (the default waits up to 0.5 s).
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"shapes-server:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> "ShapesServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_demo_world(demo_dir: str | os.PathLike) -> ShapesServer:
    """A started server for a demo world written by `write_demo_data`, on the port its URLs name.

    Use it as a context manager (or call .stop()).
    """
    demo = Path(demo_dir)
    world_file = demo / "world.json"
    if not world_file.is_file():
        raise FileNotFoundError(f"{world_file}: not found; write a demo world first with `loom demo-data {demo}`")
    port = json.loads(world_file.read_text(encoding="utf-8"))["port"]
    server = ShapesServer(demo / "web", port)
    try:
        return server.start()
    except PortInUseError as error:
        raise PortInUseError(
            errno.EADDRINUSE,
            f"{world_file}: the demo world's URLs point at 127.0.0.1:{port}, which another process is using. "
            f"Stop that process, or regenerate the world on a free port with "
            f"`loom demo-data {demo} --port N`.",
        ) from error
