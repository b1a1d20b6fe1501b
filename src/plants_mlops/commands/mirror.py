"""A loopback HTTP mirror over a folder (``plants-mlops data serve``): what the synthetic
catalogue of ``datasets/data_synth.py`` is fetched from by the ingestion tests and the
scale benchmark. ``/slow/...`` paths answer after ``slow_s`` seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    slow_s = 0.2
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per client thread
    # TCP_NODELAY: the handler writes the headers and the body in two sends; with Nagle on,
    # the body waited for the client's delayed ACK of the headers (40 ms on Linux) on every
    # keep-alive request, which capped 8 client threads at ~170 requests/s whatever the CPU.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # quiet: 100,000 lines otherwise
        pass

    def do_GET(self):
        if self.path.startswith("/slow/"):
            time.sleep(self.slow_s)
        return super().do_GET()


@contextmanager
def serve(root: str | Path, port: int = 0, slow_s: float = 0.2) -> Iterator[str]:
    """A loopback HTTP mirror over ``root`` (threads; ``/slow/...`` waits ``slow_s``);
    yields its base URL and stops on exit."""
    handler = type("SynthHandler", (_Handler,), {"slow_s": slow_s})
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
