"""The prediction API under a real uvicorn process, serving a real registered champion."""

from __future__ import annotations

import base64
import sqlite3
import time

import httpx
import numpy as np
import pytest
from support import images
from support.champion import register_champion, unique_model_name
from support.params import base_labels
from support.serving import ADMIN_KEY, running_api


@pytest.fixture(scope="module")
def champion(mlflow_tracking_uri):
    name = unique_model_name()
    return name, register_champion(mlflow_tracking_uri, name=name)


@pytest.fixture(scope="module")
def api(tmp_path_factory, mlflow_tracking_uri, champion):
    name, _ = champion
    marker = tmp_path_factory.mktemp("retrain") / "retrain-ran.txt"
    retrain = f"python3 -c \"open('{marker}', 'w').write('ran')\""
    with running_api(
        tmp_path_factory.mktemp("api"),
        tracking_uri=mlflow_tracking_uri,
        model_name=name,
        env={"PLANTS_RETRAIN_COMMAND": retrain},
    ) as running:
        running.retrain_marker = marker
        yield running


@pytest.fixture
def client(api):
    with httpx.Client(base_url=api.url, timeout=30) as c:
        yield c


def predict(client, data: bytes, filename="x.jpg", ctype="image/jpeg") -> httpx.Response:
    return client.post("/predict", files={"file": (filename, data, ctype)})


def test_health_is_ok_and_ready_names_the_champion_version(client, champion):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == champion[1].version


def test_predict_returns_label_probabilities_model_version_request_id_and_latency(client, champion):
    r = predict(client, images.sample_jpeg(0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in base_labels()
    assert set(body["probabilities"]) == set(base_labels())
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == max(body["probabilities"].values())
    assert body["model_version"] == champion[1].version
    assert body["model_name"] == champion[0]
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["latency_ms"] > 0


def test_a_client_request_id_is_echoed_and_every_response_carries_one(client):
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    for resp in (client.get("/nope"), client.post("/predict"), client.get("/metrics")):
        assert len(resp.headers["x-request-id"]) >= 8


def test_model_shows_version_metrics_fingerprint_and_lineage_to_the_mlflow_run(client, champion):
    name, reg = champion
    body = client.get("/model").json()
    assert body["name"] == name
    assert body["version"] == reg.version
    assert body["run_id"] == reg.run_id
    assert body["dataset_fingerprint"] == reg.meta["dataset_fingerprint"]
    assert body["test_metrics"] == reg.meta["test_metrics"]
    assert body["lineage"]["run_id"] == reg.run_id
    assert body["lineage"]["run_url"].endswith(f"/runs/{reg.run_id}")
    assert body["lineage"]["metrics"]["test_accuracy"] == 0.5
    assert body["embedding_dim"] == 32 and body["precision"] == "fp32"
    assert body["last_reload_error"] is None


def test_metrics_count_requests_latencies_predictions_per_class_and_model_version(client, champion):
    label = predict(client, images.sample_jpeg(6)).json()["label"]
    text = client.get("/metrics").text
    assert 'plants_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert "plants_http_request_duration_seconds_bucket" in text
    assert (
        f'plants_predictions_total{{label="{label}",model_version="{champion[1].version}"}}' in text
    )
    assert (
        f'plants_model_version_info{{name="{champion[0]}",version="{champion[1].version}"}} 1.0'
        in text
    )


def test_batch_predicts_each_file_and_reports_bad_files_without_failing_the_batch(client):
    files = [
        ("files", ("a.jpg", images.sample_jpeg(0), "image/jpeg")),
        ("files", ("b.txt", b"hello", "application/octet-stream")),
        ("files", ("c.jpg", images.sample_jpeg(0, "grass"), "image/jpeg")),
    ]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["count"], body["succeeded"], body["failed"]) == (3, 2, 1)
    assert body["items"][1]["error"]["error"] == "not_an_image"
    assert body["items"][0]["prediction"]["label"] in base_labels()
    single = predict(client, images.sample_jpeg(0)).json()
    assert body["items"][0]["prediction"]["probabilities"] == pytest.approx(
        single["probabilities"], abs=1e-4
    )


def test_a_part_of_the_wrong_type_or_size_is_its_own_error_in_the_batch(client):
    """Checked before decoding, these failed the whole batch (415, 413) and the good files
    got no answer."""
    over = 10 * 1024 * 1024 + 1  # PLANTS_MAX_UPLOAD_BYTES' default, plus one
    files = [
        ("files", ("a.jpg", images.sample_jpeg(0), "image/jpeg")),
        ("files", ("notes.txt", b"hello", "text/plain")),
        ("files", ("big.jpg", images.sample_jpeg(1) + b"\0" * over, "image/jpeg")),
        ("files", ("c.jpg", images.sample_jpeg(0, "grass"), "image/jpeg")),
    ]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["count"], body["succeeded"], body["failed"]) == (4, 2, 2)
    errors = [(i["filename"], (i.get("error") or {}).get("error")) for i in body["items"]]
    assert errors == [
        ("a.jpg", None),
        ("notes.txt", "unsupported_media_type"),
        ("big.jpg", "too_large"),
        ("c.jpg", None),
    ]


def test_a_batch_over_the_parsers_own_file_limit_is_refused_as_too_many_files(client):
    """Past 1,000 parts Starlette's parser gave up first: a 400 "There was an error
    parsing the body" instead of the batch limit the API states."""
    tiny = images.sample_jpeg(0)[:200]
    files = [("files", (f"{i}.jpg", tiny, "image/jpeg")) for i in range(1001)]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "too_many_files"
    assert "the batch limit is 32" in r.json()["detail"]


def test_several_images_on_predict_are_refused_not_answered_for_the_last(client):
    """Two `file` parts were answered for the second alone, the first silently dropped."""
    files = [
        ("file", ("a.jpg", images.sample_jpeg(0), "image/jpeg")),
        ("file", ("b.jpg", images.sample_jpeg(0, "grass"), "image/jpeg")),
    ]
    r = client.post("/predict", files=files)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_request"
    assert "one image" in body["detail"] and "/predict/batch" in body["detail"]


@pytest.mark.parametrize("path", ["/health", "/ready", "/model", "/metrics", "/"])
def test_head_on_a_get_route_answers_like_get_without_a_body(client, path):
    """HEAD (`curl -I`, uptime checks) answered 405 on every route."""
    got, head = client.get(path), client.head(path)
    assert head.status_code == got.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["x-request-id"]


GOOD_ODD_IMAGES = {
    "png_with_alpha": (images.png_with_alpha, "image/png"),
    "greyscale_jpeg": (images.greyscale_jpeg, "image/jpeg"),
    "cmyk_jpeg": (images.cmyk_jpeg, "image/jpeg"),
    "palette_gif": (images.palette_gif, "image/gif"),
    "no_content_type": (lambda: images.sample_jpeg(7), "application/octet-stream"),
}


@pytest.mark.parametrize("kind", GOOD_ODD_IMAGES)
def test_alpha_greyscale_cmyk_and_palette_images_are_predicted(client, kind):
    make, ctype = GOOD_ODD_IMAGES[kind]
    r = predict(client, make(), filename=f"{kind}.img", ctype=ctype)
    assert r.status_code == 200, r.text
    assert r.json()["label"] in base_labels()


def test_a_16_bit_greyscale_png_is_answered_like_its_8_bit_copy(client):
    """It was predicted on a white square (Pillow clips 16-bit values at 255)."""
    import io

    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(images.greyscale_jpeg())).convert("L"))
    answers = []
    for pixels in (grey, grey.astype(np.uint16) * 257):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        r = predict(client, buf.getvalue(), filename="grey.png", ctype="image/png")
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert answers[1]["probabilities"] == pytest.approx(answers[0]["probabilities"], abs=1e-6)
    assert answers[1]["ood_score"] == answers[0]["ood_score"]


BAD_INPUTS = {
    "not_an_image": (lambda: b"just some text, not pixels", "image/jpeg", 415, "not_an_image"),
    "html_page": (lambda: b"<!doctype html><html></html>", "image/jpeg", 415, "not_an_image"),
    "truncated_jpeg": (images.truncated_jpeg, "image/jpeg", 400, "damaged_image"),
    "jpeg_without_end_marker": (
        lambda: images.sample_jpeg(6)[:-32],  # its last bytes, FF D9 included
        "image/jpeg",
        400,
        "damaged_image",
    ),
    "png_cut_short": (lambda: images.png_with_alpha()[:-100], "image/png", 400, "damaged_image"),
    "padded_jpeg": (images.padded_jpeg, "image/jpeg", 400, "damaged_image"),
    "empty_file": (lambda: b"", "image/jpeg", 400, "empty"),
    "wrong_content_type": (
        lambda: images.sample_jpeg(0),
        "text/plain",
        415,
        "unsupported_media_type",
    ),
    "decompression_bomb": (images.decompression_bomb_png, "image/png", 413, "too_large"),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_uploads_get_a_clear_json_4xx_without_a_traceback(client, kind):
    make, ctype, status, code = BAD_INPUTS[kind]
    r = predict(client, make(), ctype=ctype)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code
    assert body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text


def test_a_file_over_the_size_limit_is_refused_with_413(client):
    big = images.sample_jpeg(0) + b"\0" * (11 * 1024 * 1024)
    r = predict(client, big)
    assert r.status_code == 413
    assert r.json()["error"] == "too_large"


@pytest.mark.parametrize("how", ["json_body", "no_file_field", "raw_bytes"])
def test_requests_that_are_not_a_multipart_upload_get_422_with_a_hint(client, how):
    if how == "json_body":
        r = client.post("/predict", json={"image": base64.b64encode(b"x").decode()})
    elif how == "no_file_field":
        r = client.post("/predict", files={"other": ("a.jpg", images.sample_jpeg(0))})
    else:
        r = client.post(
            "/predict", content=images.sample_jpeg(0), headers={"content-type": "image/jpeg"}
        )
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"
    assert "multipart/form-data" in r.json()["detail"]


def test_the_server_survives_bad_inputs_and_logs_json_without_leaking_tracebacks(client, api):
    for make, ctype, _, _ in BAD_INPUTS.values():
        predict(client, make(), ctype=ctype)
    assert client.get("/health").status_code == 200
    assert predict(client, images.sample_jpeg(8)).status_code == 200
    import json
    import time

    deadline = time.monotonic() + 10  # INFO lines are written in batches, 0.2 s apart
    while True:
        lines = [line for line in api.log_text().splitlines() if line.startswith("{")]
        docs = [json.loads(line) for line in lines]
        requests = [d for d in docs if d.get("event") == "http_request"]
        if len(requests) > len(BAD_INPUTS) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert requests and all("request_id" in d and "duration_ms" in d for d in requests)
    assert not [d for d in docs if d.get("event") == "unhandled_error"]


def test_a_warning_while_decoding_an_upload_is_a_json_line_too(client, api):
    """Pillow warns about a corrupt EXIF block on stderr; the line was plain text among the
    JSON ones (any client could write it)."""
    import json

    payload = b"Exif\0\0II*\0\x08\0\0\0\x05\0"  # one IFD entry announced, none there
    jpeg = images.sample_jpeg(9)
    bad_exif = jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]
    assert predict(client, bad_exif).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in api.log_text().splitlines() if "Corrupt EXIF" in line]
        if lines:
            break
        time.sleep(0.1)
    assert lines and all(line.startswith("{") for line in lines), lines
    doc = json.loads(lines[0])
    assert doc["logger"] == "py.warnings" and doc["level"] == "warning"


def test_admin_routes_refuse_missing_or_wrong_keys(client):
    assert client.post("/admin/reload").status_code == 401
    r = client.post("/admin/reload", headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    ok = client.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY})
    assert ok.status_code == 200
    assert ok.json()["changed"] is False


def test_retrain_route_starts_the_configured_command_in_the_background(client, api):
    r = client.post("/admin/retrain", headers={"X-API-Key": ADMIN_KEY}, json={"reason": "test"})
    assert r.status_code == 202, r.text
    assert r.json()["started"] is True
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = client.get("/admin/retrain", headers={"X-API-Key": ADMIN_KEY}).json()
        if not status["running"] and status["returncode"] is not None:
            break
        time.sleep(0.2)
    assert status["returncode"] == 0
    assert status["reason"] == "test"
    assert api.retrain_marker.read_text() == "ran"


def test_each_prediction_is_logged_with_stats_probabilities_and_embedding(client, api, champion):
    rid = predict(client, images.sample_jpeg(9)).json()["request_id"]
    db = api.workdir / "plants.db"
    row = None
    deadline = time.monotonic() + 15
    while row is None and time.monotonic() < deadline:
        time.sleep(0.2)
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute(
                "SELECT * FROM prediction_log WHERE request_id = ?", (rid,)
            ).fetchone()
    assert row is not None, "prediction never reached the log"
    assert row["model_version"] == champion[1].version
    assert row["label"] in base_labels()
    assert 0 < row["stat_brightness"] < 1 and row["stat_sharpness"] > 0
    assert row["latency_ms"] > 0
    assert np.frombuffer(row["embedding"], dtype=np.float32).shape == (32,)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PLANTS_PREDICTION_LOG": "kafka"}, "PLANTS_PREDICTION_LOG must be sql, s3 or off"),
        ({"PLANTS_PREDICTION_LOG": "s3"}, "needs PLANTS_PREDICTION_LOG_URI"),
        ({"PLANTS_MODEL_POLL_SECONDS": "soon"}, "PLANTS_MODEL_POLL_SECONDS='soon' is not a number"),
    ],
)
def test_serve_refuses_bad_settings_with_a_one_line_error(
    tmp_path, env, message, monkeypatch, capsys
):
    from plants_mlops import cli

    monkeypatch.chdir(tmp_path)
    for name, value in {"PLANTS_PREDICTION_LOG_URI": "", **env}.items():
        monkeypatch.setenv(name, value)
    returncode = cli.main(["serve", "--port", "1"])
    stderr = capsys.readouterr().err
    assert returncode == 1
    assert message in stderr
    assert "Traceback" not in stderr
