"""The server's JSON log lines (unit level; the lines of a real server are checked in
test_serving.py)."""

from __future__ import annotations

import io
import json
import logging

from plants_mlops.serving.logs import JsonFormatter, request_id_var


def test_a_line_is_one_json_object_with_the_request_id_and_the_event_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test-json-lines")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    token = request_id_var.set("req-1")
    try:
        logger.warning("POST %s %d", "/predict", 200, extra={"event": "http_request", "ms": 2.5})
    finally:
        request_id_var.reset(token)
    logger.info("outside a request")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "POST /predict 200" and first["level"] == "warning"
    assert (first["request_id"], first["event"], first["ms"]) == ("req-1", "http_request", 2.5)
    assert "request_id" not in second
