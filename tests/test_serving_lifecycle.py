"""Model lifecycle in a running API: not ready until loaded, hot swap under load, a broken
new champion, and a clean shutdown that flushes the prediction log."""

from __future__ import annotations

import json
import time

import boto3
import httpx
import pytest
import sqlalchemy as sa
from support import images, servers
from support.champion import (
    register_champion,
    serving_meta,
    set_champion,
    tiny_cnn_onnx,
    unique_model_name,
)
from support.serving import ADMIN_KEY, api_in_process, predict_burst, running_api

ADMIN = {"X-API-Key": ADMIN_KEY}


def _predict(client: httpx.Client, i: int = 0) -> httpx.Response:
    data = images.sample_jpeg(i % 50, "dandelion" if i % 2 else "grass")
    return client.post("/predict", files={"file": ("x.jpg", data, "image/jpeg")})


def test_a_static_int8_champion_is_served_and_says_so(tmp_path, mlflow_tracking_uri):
    """What training registers when int8 wins (model/quantize.py): the API runs the QDQ
    graph as it is, with the float model's answers, and reports the precision."""
    import numpy as np

    from plants_mlops import imaging
    from plants_mlops.model import artifact, quantize

    name = unique_model_name()
    float_onnx = tiny_cnn_onnx(seed=3)
    meta = artifact.ServingMeta.parse(serving_meta(64, None, 160))
    fp32 = artifact.ServingArtifact.from_bytes(float_onnx, meta, threads=1)
    blobs = [images.sample_jpeg(i, "dandelion" if i % 2 else "grass") for i in range(16)]
    x = np.stack([fp32.preprocess(imaging.decode_image(b).image)[0] for b in blobs])
    int8_onnx = quantize.quantize_int8(float_onnx, x)
    version = register_champion(
        mlflow_tracking_uri, name=name, onnx=int8_onnx, precision="int8"
    ).version
    expected = fp32.run(x).probabilities
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as c:
        body = c.get("/model").json()
        answers = [
            c.post("/predict", files={"file": ("x.jpg", b, "image/jpeg")}).json() for b in blobs
        ]
    assert (body["version"], body["precision"]) == (version, "int8")
    served = np.array([[a["probabilities"][lab] for lab in meta.labels] for a in answers])
    assert np.abs(served - expected).max() < 0.02  # the float model's answers, quantized
    assert [a["label"] for a in answers] == [meta.labels[i] for i in expected.argmax(axis=1)]


def test_ready_is_503_and_predict_503_until_a_champion_exists_then_reload_serves_it(
    tmp_path, mlflow_tracking_uri
):
    name = unique_model_name()
    with api_in_process(
        tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, wait_for_model=False
    ) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        r = _predict(c)
        assert r.status_code == 503 and r.json()["error"] == "model_not_ready"
        version = register_champion(mlflow_tracking_uri, name=name).version
        assert c.post("/admin/reload", headers=ADMIN).json()["model_version"] == version
        assert c.get("/ready").status_code == 200
        assert _predict(c).json()["model_version"] == version


def test_a_new_champion_is_swapped_in_during_a_burst_with_zero_failed_requests(
    tmp_path, mlflow_tracking_uri
):
    name = unique_model_name()
    v1 = register_champion(mlflow_tracking_uri, name=name, seed=1).version
    env = {"PLANTS_MODEL_POLL_SECONDS": "0.5"}
    with (
        running_api(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as api,
        predict_burst(api.url) as results,
    ):
        time.sleep(1.0)
        v2 = register_champion(mlflow_tracking_uri, name=name, seed=2).version
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if httpx.get(f"{api.url}/model").json()["version"] == v2:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # keep the burst going on the new model
    statuses = [s for s, _, _ in results]
    versions = [v for _, v, _ in results]
    assert statuses.count(200) == len(results), f"failed: {[s for s in statuses if s != 200]}"
    assert v1 in versions and v2 in versions
    # once the swap happened, no request went back to the old model
    assert versions.index(v2) > versions.index(v1)
    assert v1 not in versions[len(versions) - versions[::-1].index(v2) :]
    assert len(results) > 20


def test_a_champion_that_fails_to_load_keeps_the_old_model_and_says_so(
    tmp_path, mlflow_tracking_uri, caplog
):
    name = unique_model_name()
    good = register_champion(mlflow_tracking_uri, name=name).version
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as c:
        bad = register_champion(mlflow_tracking_uri, name=name, broken=True).version
        r = c.post("/admin/reload", headers=ADMIN).json()
        assert r["changed"] is False
        assert r["model_version"] == good
        assert "serving contract" in r["error"]
        model = c.get("/model").json()
        assert model["version"] == good
        assert model["last_reload_error"]["version"] == bad
        assert model["last_reload_error"]["kept_version"] == good
        assert _predict(c).json()["model_version"] == good
        assert "plants_model_reload_failures_total 1.0" in c.get("/metrics").text
        # a good champion afterwards clears the error
        set_champion(mlflow_tracking_uri, good, name=name)
        fixed = register_champion(mlflow_tracking_uri, name=name, seed=3).version
        assert c.post("/admin/reload", headers=ADMIN).json()["model_version"] == fixed
        assert c.get("/model").json()["last_reload_error"] is None
    events = [getattr(r, "event", None) for r in caplog.records]
    assert "model_load_failed" in events  # the JSON log line's "event" (serving/logs.py)


@pytest.mark.parametrize("database", ["postgres_url", "mariadb_url"])
def test_clean_shutdown_flushes_every_prediction_to_the_sql_log(
    tmp_path, mlflow_tracking_uri, request, database
):
    db_url = request.getfixturevalue(database)
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    # A long flush interval and a huge batch: rows stay queued until shutdown flushes them.
    env = {"PLANTS_PREDICTION_LOG_FLUSH_SECONDS": "3600", "PLANTS_PREDICTION_LOG_BATCH": "100000"}
    request_ids = []
    with (
        running_api(
            tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, db_url=db_url, env=env
        ) as api,
        httpx.Client(base_url=api.url) as c,
    ):
        for i in range(25):
            request_ids.append(_predict(c, i).json()["request_id"])
        batch = c.post(
            "/predict/batch",
            files=[
                ("files", ("a.jpg", images.sample_jpeg(1), "image/jpeg")),
                ("files", ("b.jpg", images.sample_jpeg(2), "image/jpeg")),
            ],
        ).json()
        request_ids += [item["prediction"]["request_id"] for item in batch["items"]]
        api.stop()
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        logged = conn.execute(sa.text("SELECT request_id FROM prediction_log")).scalars().all()
    engine.dispose()
    assert sorted(logged) == sorted(request_ids)
    assert '"event": "prediction_log_closed"' in api.log_text()
    # Every request has its access line, the last ones (written in batches) included.
    access = [
        json.loads(line)
        for line in api.log_text().splitlines()
        if line.startswith("{") and '"event": "http_request"' in line
    ]
    assert [d["path"] for d in access if d["method"] == "POST"] == ["/predict"] * 25 + [
        "/predict/batch"
    ]


def test_the_s3_prediction_log_is_a_date_partitioned_parquet_dataset_monitoring_can_read(
    tmp_path, mlflow_tracking_uri, s3_endpoint, s3_bucket, monkeypatch
):
    from plants_mlops.datasets.monitoring_prediction_log import PredictionLogDataset

    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    uri = f"s3://{s3_bucket}/prediction_log"
    env = {"PLANTS_PREDICTION_LOG": "s3", "PLANTS_PREDICTION_LOG_URI": uri}
    monkeypatch.setenv("PLANTS_S3_ENDPOINT_URL", s3_endpoint)  # the S3 client reads it
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as c:
        request_ids = [_predict(c, i).json()["request_id"] for i in range(6)]
    # leaving the block shut the app down: its log writer flushed what it held
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)[
            "Contents"
        ]
    ]
    assert keys and all(
        k.startswith("prediction_log/date=") and k.endswith(".parquet") for k in keys
    )
    frame = PredictionLogDataset(source="s3", path=uri).load()
    assert sorted(frame["request_id"]) == sorted(request_ids)
    assert frame["embedding"].map(len).eq(32).all()
    assert {"brightness", "sharpness", "label", "confidence"} <= set(frame.columns)


def test_rows_the_store_cannot_take_at_shutdown_are_spilled_to_a_file_not_lost(tmp_path):
    """A database that refuses connections: close() retries, then spills every row."""
    import json

    from support.serving import prediction_record

    from plants_mlops.db.prediction_log import SqlStore
    from plants_mlops.serving.predlog import PredictionLogWriter

    port = servers.free_port()  # nothing listens there
    sink = SqlStore(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/none")
    writer = PredictionLogWriter(
        sink, batch_size=1000, flush_seconds=3600, spill_dir=tmp_path / "spill"
    )
    for i in range(5):
        writer.submit(prediction_record(i))
    writer.close()
    lines = [
        json.loads(line)
        for f in (tmp_path / "spill").glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert sorted(r["request_id"] for r in lines) == [f"r{i}" for i in range(5)]
    assert lines[0]["embedding"] == [0.0, 1.0, 2.0, 3.0]
    assert writer.written == 0 and writer.failed_writes >= 3
