"""Structured JSON logs: one JSON object per line, with the request id when there is one."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            doc["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class BatchedStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes INFO and DEBUG lines in batches (the access log's).

    The access log writes a line per request. Written one by one, each line was a write to
    stderr from the event loop, a system call that releases the GIL to the prediction
    lanes (docs/serving.md, *The event loop's share*). Here the lines wait in memory and a
    flusher thread writes them together ``interval`` seconds after the first of them (or
    at once past ``max_lines``). A WARNING or worse is written at once, after the lines
    before it, so order is kept. ``flush`` writes what waits (the app's shutdown,
    ``logging.shutdown``); a process killed with SIGKILL loses at most ``interval``
    seconds of INFO lines.
    """

    def __init__(self, stream=None, *, interval: float = 0.2, max_lines: int = 1000) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._pending = threading.Event()
        self._flusher = threading.Thread(target=self._flush_later, name="log-flush", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        if record.levelno >= logging.WARNING or len(self._lines) >= self.max_lines:
            self._write_out()
        elif len(self._lines) == 1:
            self._pending.set()

    def _write_out(self) -> None:
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:  # a closed or full stream must not fail the request
            pass

    def flush(self) -> None:
        with self.lock:
            self._write_out()

    def _flush_later(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            time.sleep(self.interval)  # let the lines of a burst gather
            self.flush()


ACCESS_LOGGER = "plants_mlops.serving.access"


def configure_json_logging(level: int = logging.INFO) -> None:
    """Route the root logger and uvicorn's loggers to one JSON stream on stderr; the access
    log (a line per request) goes to the same stream in batches (BatchedStreamHandler),
    so its lines can follow lines logged up to 0.2 s after them (each has its time)."""
    # Fields the JSON lines never show, so no record gathers them (the logging HOWTO's
    # "Optimization": about 2 of the 10 us a line costs).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup (file, line, function) per record
    formatter = JsonFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # Our middleware writes one access line per request with the request id and latency.
    logging.getLogger("uvicorn.access").disabled = True
    batched = BatchedStreamHandler(sys.stderr)
    batched.setFormatter(formatter)
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers[:] = [batched]
    access.propagate = False


def flush_access_log() -> None:
    """Write the access lines still waiting (the app's shutdown: uvicorn ends a process
    stopped by a signal by raising that signal again, so nothing runs at exit)."""
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()
