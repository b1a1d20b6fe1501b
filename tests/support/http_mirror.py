"""A real HTTP server over the sample image folder (a faithful mirror of the public URLs),
plus routes that misbehave the way the internet does. Runs in its own process."""

from __future__ import annotations

import argparse
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULTS = {
    "/faults/missing.jpg": "404",
    "/faults/flaky.jpg": "500 on the first request, then the real image",
    "/faults/slow.jpg": "sleeps 30 s before answering (past any sane timeout)",
    "/faults/page.jpg": "an HTML page with status 200",
    "/faults/truncated.jpg": "the first half of a real JPEG",
    "/faults/empty.jpg": "zero bytes with status 200",
    "/faults/always500.jpg": "500 every time",
    "/faults/trickle.jpg": "a real JPEG at 1 byte every 0.2 s (each read on time, the whole never)",
    "/faults/redirect.jpg?to=URL": "302 to URL",
}


def make_handler(root: Path, sample: Path):
    counts: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "image/jpeg") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/health":
                return self._send(200, b"ok", "text/plain")
            if path == "/counts":
                with lock:
                    body = repr(dict(counts)).encode()
                return self._send(200, body, "text/plain")
            with lock:
                counts[path] = counts.get(path, 0) + 1
                n = counts[path]
            if path == "/faults/missing.jpg":
                return self._send(404, b"not found", "text/plain")
            if path == "/faults/always500.jpg":
                return self._send(500, b"boom", "text/plain")
            if path == "/faults/flaky.jpg":
                if n == 1:
                    return self._send(500, b"try again", "text/plain")
                return self._send(200, sample.read_bytes())
            if path == "/faults/slow.jpg":
                time.sleep(30)
                return self._send(200, sample.read_bytes())
            if path == "/faults/page.jpg":
                return self._send(
                    200, b"<!DOCTYPE html><html><body>Moved</body></html>", "text/html"
                )
            if path == "/faults/truncated.jpg":
                data = sample.read_bytes()
                return self._send(200, data[: len(data) // 2])
            if path == "/faults/empty.jpg":
                return self._send(200, b"")
            if path == "/faults/trickle.jpg":
                data = sample.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for i in range(min(len(data), 300)):  # bounded: 60 s at most
                    try:
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up: the point of the fault
                        return None
                    time.sleep(0.2)
                return None
            if path == "/faults/redirect.jpg":
                from urllib.parse import parse_qs

                target = parse_qs(self.path.split("?", 1)[1])["to"][0]
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return super().do_GET()

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    root = Path(args.root)
    sample = next(iter(sorted((root / "dandelion").glob("*.jpg"))))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(root, sample))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
