"""Monitoring for real: the data pipeline builds the reference (the validation split of the
session's ``built_data``), the API (in process) serves a registered champion and logs what
it sees, the monitoring pipeline (a Kedro session in process) judges it.
Held-out test images must not flag drift; darkened, blurred or greyscale ones must."""

from __future__ import annotations

import io
import json
import time

import pandas as pd
import pytest
from conftest import PUBLIC_PREFIX, SAMPLES, KedroProject, environment, new_project
from PIL import Image, ImageEnhance, ImageFilter
from support.champion import register_champion, unique_model_name
from support.serving import api_in_process

pytestmark = pytest.mark.slow

SHIFTS = {
    "darkened": lambda img: ImageEnhance.Brightness(img).enhance(0.45),
    "blurred": lambda img: img.filter(ImageFilter.GaussianBlur(radius=3)),
    "greyscale": lambda img: img.convert("L").convert("RGB"),
}


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, mlflow_tracking_uri, built_data):
    """A project with its data layers built, a champion, and the API logging into its DB."""
    root = tmp_path_factory.mktemp("monitoring")
    project = new_project(root / "project").copy_data_from(built_data)
    name = unique_model_name("plants-classifier-monitoring")
    env = {
        "PLANTS_DB_URL": f"sqlite:///{project.path / 'data' / 'plants.db'}",
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "PLANTS_MODEL_URI": f"models:/{name}@champion",
        "KEDRO_DISABLE_TELEMETRY": "true",
    }
    with environment(env):
        register_champion(mlflow_tracking_uri, name=name)
        index = pd.read_parquet(project.path / "data" / "03_primary" / "dataset_index.parquet")
        with api_in_process(
            root / "api",
            tracking_uri=mlflow_tracking_uri,
            model_name=name,
            db_url=env["PLANTS_DB_URL"],
        ) as api:
            yield project, env, index, api


def _test_images(index: pd.DataFrame) -> list[bytes]:
    rows = index[index["split"] == "test"]
    return [(SAMPLES / u.removeprefix(PUBLIC_PREFIX)).read_bytes() for u in rows["url_source"]]


def _shifted(data: bytes, shift: str) -> bytes:
    img = SHIFTS[shift](Image.open(io.BytesIO(data)).convert("RGB"))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _feed(api, payloads: list[bytes]) -> None:
    for start in range(0, len(payloads), 16):
        files = [
            ("files", (f"{i}.jpg", p, "image/jpeg"))
            for i, p in enumerate(payloads[start : start + 16])
        ]
        body = api.post("/predict/batch", files=files).json()
        assert body["failed"] == 0, body
    time.sleep(1.0)  # the log writer flushes every 0.2 s in tests


def _monitor(project: KedroProject, env: dict, n: int, extra: dict | None = None) -> dict:
    project.run(
        "monitoring", params={"monitoring.window.last_n": n}, extra_env={**env, **(extra or {})}
    )
    reporting = project.path / "data" / "08_reporting"
    assert (reporting / "monitoring_drift_report.html").stat().st_size > 10_000
    assert json.loads((reporting / "monitoring_drift_report.json").read_text())["metrics"]
    return json.loads((reporting / "monitoring_verdict.json").read_text())


def test_an_empty_prediction_log_gives_an_insufficient_data_verdict_not_a_failure(
    tmp_path, monitored
):
    project, env, _, _ = monitored
    empty_db = {"PLANTS_DB_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    project.run("monitoring", extra_env={**env, **empty_db})
    verdict = json.loads(
        (project.path / "data" / "08_reporting" / "monitoring_verdict.json").read_text()
    )
    assert verdict["status"] == "insufficient_data" and verdict["drift"] is False
    assert "monitoring needs at least" in verdict["reasons"][0]


def test_held_out_test_images_do_not_flag_drift(monitored):
    project, env, index, api = monitored
    images = _test_images(index)
    _feed(api, images)
    verdict = _monitor(project, env, len(images))
    assert verdict["n_current"] == len(images)
    # the reference: the validation split, images the champion was not fit on
    assert verdict["n_reference"] == int((index["split"] == "val").sum())
    reference = pd.read_parquet(
        project.path / "data" / "08_reporting" / "monitoring_reference.parquet",
        columns=["image_key"],
    )
    train_keys = set(index.loc[index["split"] == "train", "image_key"])
    assert len(reference) == verdict["n_reference"]
    assert not set(reference["image_key"]) & train_keys
    print("clean verdict:", json.dumps({k: verdict[k] for k in ("data_drift", "embeddings")}))
    assert verdict["status"] == "no_drift", verdict["reasons"]
    assert verdict["data_drift"]["drift"] is False
    assert verdict["embeddings"]["drift"] is False
    assert _retrain_trigger(project)["started"] is False


def _log_rows(rng, n: int) -> pd.DataFrame:
    """``n`` prediction-log rows of one distribution (what the dataset loads)."""
    from support.params import stage_params

    stats = stage_params("monitoring")["stat_columns"]
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "created_at": pd.Timestamp.now(tz="UTC"),
            "model_version": "1",
            "label": rng.choice(["dandelion", "grass"], n),
            "confidence": rng.uniform(0.6, 1.0, n),
            **{c: rng.uniform(0.3, 0.7, n) for c in stats},
            "embedding": list(rng.normal(size=(n, 128)).astype("float32")),
        }
    )


def test_a_window_of_repeated_photos_is_no_drift_alarm():
    """The drift tests see each image of the window once. Every photo of one distribution
    logged twice made Evidently's embedding classifier flag drift (8 of 10 draws), since a
    photo lands on both sides of its own train/test split; the repeats are marked and
    left out, and counted in the summary."""
    import numpy as np
    from support.params import stage_params

    from plants_mlops.pipelines.monitoring import nodes

    params = stage_params("monitoring")
    alarms = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        reference = nodes.select_current_window(_log_rows(rng, 76), params)
        once = _log_rows(rng, 59)
        current = nodes.select_current_window(pd.concat([once, once], ignore_index=True), params)
        assert int(current[nodes.REPEATED].sum()) == 59
        _, _, summary = nodes.drift_report(current, reference.drop(columns=nodes.REPEATED), params)
        assert (summary["n_current"], summary["n_repeated"]) == (59, 59)
        alarms += summary["embeddings"]["drift"]
    assert alarms == 0


def test_the_same_photos_sent_twice_are_judged_once_and_do_not_flag_drift(monitored):
    """A window where every held-out photo was predicted twice (a client retrying, a demo
    run again) holds each image once for the drift tests: repeated rows would let the
    embedding drift classifier see the same photo on both sides of its own split."""
    project, env, index, api = monitored
    images = _test_images(index)
    _feed(api, images + images)
    verdict = _monitor(project, env, 2 * len(images))
    assert verdict["n_current"] == len(images)
    assert verdict["n_repeated"] == len(images)
    assert verdict["status"] == "no_drift", verdict["reasons"]
    assert verdict["embeddings"]["drift"] is False


def _retrain_trigger(project: KedroProject) -> dict:
    path = project.path / "data" / "08_reporting" / "monitoring_retrain_trigger.json"
    return json.loads(path.read_text())


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_visibly_shifted_images_flag_drift_and_only_an_enabled_trigger_retrains(
    monitored, shift, tmp_path
):
    """Retraining is off by default; the darkened case turns it on and checks it fires."""
    project, env, index, api = monitored
    images = [_shifted(b, shift) for b in _test_images(index)]
    _feed(api, images)
    marker = tmp_path / "retrain-ran.txt"
    extra = {}
    if shift == "darkened":
        extra = {
            "PLANTS_MONITORING_RETRAIN": "true",
            "PLANTS_RETRAIN_COMMAND": f"python3 -c \"open('{marker}', 'w').write('ran')\"",
        }
    verdict = _monitor(project, env, len(images), extra)
    print(shift, "verdict:", verdict["reasons"], verdict["embeddings"])
    assert verdict["status"] == "drift", verdict
    assert verdict["reasons"]
    trigger = _retrain_trigger(project)
    assert trigger["drift"] is True
    if not extra:
        assert trigger["started"] is False and "retraining is off" in trigger["detail"]
        return
    assert trigger["started"] is True and trigger["pid"] > 0
    for _ in range(100):
        if marker.exists():
            break
        time.sleep(0.2)
    assert marker.read_text() == "ran"
