"""The server's JSON logs in batches and its request ids (unit level; the log lines of a
real server are checked in test_serving.py)."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid

from plants_mlops.serving.logs import BatchedStreamHandler, JsonFormatter
from plants_mlops.serving.middleware import RequestIds


def _logger(stream: io.StringIO, **kw) -> tuple[logging.Logger, BatchedStreamHandler]:
    handler = BatchedStreamHandler(stream, **kw)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test-batched-{id(stream)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


def _messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]


def test_info_lines_are_written_together_within_the_interval_and_in_order():
    stream = io.StringIO()
    logger, _ = _logger(stream, interval=0.2)
    for i in range(50):
        logger.info("line %d", i)
    assert stream.getvalue() == ""  # waiting in memory: no write per line
    deadline = time.monotonic() + 5
    while len(_messages(stream)) < 50:
        assert time.monotonic() < deadline, "the lines were never written"
        time.sleep(0.02)
    assert _messages(stream) == [f"line {i}" for i in range(50)]
    assert stream.getvalue().count("\n") == 50


def test_a_warning_is_written_at_once_after_the_lines_before_it():
    stream = io.StringIO()
    logger, _ = _logger(stream, interval=60)  # only the warning can have written them
    logger.info("first")
    logger.info("second")
    logger.warning("something is wrong")
    assert _messages(stream) == ["first", "second", "something is wrong"]
    assert json.loads(stream.getvalue().splitlines()[-1])["level"] == "warning"


def test_full_buffer_and_flush_write_the_waiting_lines():
    stream = io.StringIO()
    logger, handler = _logger(stream, interval=60, max_lines=10)
    for i in range(25):
        logger.info("n%d", i)
    assert len(_messages(stream)) == 20  # two full batches of 10
    handler.flush()  # what logging.shutdown does at exit
    assert _messages(stream) == [f"n{i}" for i in range(25)]


def test_request_ids_are_unique_random_uuid4_hex_like_uuid4():
    ids = RequestIds()
    drawn = [ids.new() for _ in range(3 * RequestIds.BLOCK + 5)]  # across several blocks
    assert len(set(drawn)) == len(drawn)
    for rid in drawn:
        parsed = uuid.UUID(hex=rid)
        assert parsed.hex == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122
