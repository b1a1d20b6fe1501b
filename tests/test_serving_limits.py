"""Serving settings are checked at start (one clear line per bad value), and what the API
answers to requests it must refuse."""

from __future__ import annotations

import pytest

from plants_mlops.errors import UserFacingError
from plants_mlops.serving.config import ServingConfig


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"PLANTS_PREDICTION_LOG_FLUSH_SECONDS": "0"},
            "PLANTS_PREDICTION_LOG_FLUSH_SECONDS=0 is outside 0.05..3600 seconds",
        ),
        (
            {"PLANTS_MODEL_POLL_SECONDS": "0.001"},
            "PLANTS_MODEL_POLL_SECONDS=0.001 is outside 1..86400 seconds (or 0: off)",
        ),
        (
            {"PLANTS_MAX_UPLOAD_BYTES": "-1"},
            "PLANTS_MAX_UPLOAD_BYTES=-1 is outside 1024..104857600 bytes",
        ),
        ({"PLANTS_ORT_THREADS": "0"}, "PLANTS_ORT_THREADS=0 is outside 1..64 threads"),
    ],
)
def test_a_setting_outside_its_range_is_refused_in_one_line(monkeypatch, env, line):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserFacingError) as caught:
        ServingConfig.from_env()
    assert line in str(caught.value).splitlines()


def test_every_bad_value_gets_its_own_line(monkeypatch):
    monkeypatch.setenv("PLANTS_PREDICTION_LOG_FLUSH_SECONDS", "0")
    monkeypatch.setenv("PLANTS_MAX_BATCH_FILES", "100000")
    with pytest.raises(UserFacingError) as caught:
        ServingConfig.from_env()
    lines = str(caught.value).splitlines()
    assert lines[0] == "bad serving settings:" and len(lines) == 3


def test_polling_off_and_the_defaults_are_accepted(monkeypatch):
    monkeypatch.setenv("PLANTS_MODEL_POLL_SECONDS", "0")
    assert ServingConfig.from_env().poll_seconds == 0
    monkeypatch.delenv("PLANTS_MODEL_POLL_SECONDS")
    assert ServingConfig.from_env().problems() == []


def test_responses_carry_security_headers_and_the_page_a_csp(tmp_path):
    from fastapi.testclient import TestClient

    from plants_mlops.serving.app import create_app

    config = ServingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        prediction_log="off",
        poll_seconds=0,
        startup_retry_seconds=3600,
    )
    with TestClient(create_app(config)) as client:
        page, health = client.get("/"), client.get("/health")
    for response in (page, health):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "content-security-policy" not in health.headers


def test_a_chunked_upload_over_the_limit_gets_413_too_large(tmp_path):
    from fastapi.testclient import TestClient

    from plants_mlops.serving.app import create_app

    config = ServingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        prediction_log="off",
        poll_seconds=0,
        startup_retry_seconds=3600,
        max_upload_bytes=1024,
    )
    boundary = "plantsboundary"

    def chunks():  # no Content-Length: the limit can only be enforced while reading
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        for _ in range(40):
            yield b"\xff" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    with TestClient(create_app(config)) as client:
        response = client.post(
            "/predict",
            content=chunks(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert response.headers["x-content-type-options"] == "nosniff"
