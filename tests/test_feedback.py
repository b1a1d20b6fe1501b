"""Feedback from serving, end to end on real stores (MLflow's server, the project's
database; the API in process): an uncertain prediction (flagged in the response and the
prediction log, its image kept) -> POST /feedback -> the review queue -> accepted -> a
plants_data row -> the next ingestion and formatting include it."""

from __future__ import annotations

import hashlib
import io
import json
import time

import pandas as pd
import pytest
import sqlalchemy as sa
from data_testlib import read_json
from PIL import Image
from support import images
from support.champion import register_champion, unique_model_name
from support.serving import ADMIN_KEY, api_in_process, prediction_record

from plants_mlops import cli, db
from plants_mlops.db.prediction_log import SqlStore
from plants_mlops.errors import UserFacingError
from plants_mlops.serving.config import ServingConfig

LABELS = ("dandelion", "grass")


def _new_photo() -> bytes:
    """A photo no table row has: a crop of a shipped sample, re-encoded."""
    img = Image.open(io.BytesIO(images.sample_jpeg(3, "grass"))).convert("RGB")
    buf = io.BytesIO()
    img.crop((5, 5, img.width - 7, img.height - 3)).save(buf, format="JPEG", quality=91)
    return buf.getvalue()


def _log_row(url: str, prediction_id: str) -> dict | None:
    engine = sa.create_engine(url)
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    row = conn.execute(
                        sa.text("SELECT * FROM prediction_log WHERE prediction_id = :p"),
                        {"p": prediction_id},
                    ).first()
            except sa.exc.OperationalError:  # the table comes with the first write
                row = None
            if row is not None:
                return dict(row._mapping)
            time.sleep(0.2)
    finally:
        engine.dispose()
    return None


def test_uncertain_prediction_feedback_review_accept_reaches_the_dataset(
    data_project, mlflow_tracking_uri, capsys
):
    project = data_project.path
    data = project / "data"
    url = f"sqlite:///{data / 'plants.db'}"
    rows_before = len(db.load_rows(db.make_engine(url)))
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    photo = _new_photo()
    sha = hashlib.sha256(photo).hexdigest()
    env = {"PLANTS_UNCERTAIN_BELOW": "1.0", "PLANTS_KEEP_UNCERTAIN_IMAGES": "true"}
    with api_in_process(
        project, tracking_uri=mlflow_tracking_uri, model_name=name, db_url=url, env=env
    ) as client:
        r = client.post("/predict", files={"file": ("lawn.jpg", photo, "image/jpeg")})
        assert r.status_code == 200, r.text
        pred = r.json()
        assert pred["uncertain"] is True  # threshold 1.0: every prediction is uncertain
        kept = data / "01_raw" / "_uncertain" / f"{sha}.jpg"
        assert kept.read_bytes() == photo
        logged = _log_row(url, pred["prediction_id"])
        assert logged is not None and bool(logged["uncertain"]) is True
        assert logged["kept_image"] == str(kept)

        body = {"prediction_id": pred["prediction_id"], "label": "grass", "comment": "all grass"}
        assert client.post("/feedback", json=body).status_code == 401  # no key
        auth = {"X-API-Key": ADMIN_KEY}
        bad = client.post("/feedback", json={**body, "label": "rose"}, headers=auth)
        assert bad.status_code == 422
        assert (
            "label 'rose' is not one of the served model's labels: dandelion, grass"
            in bad.json()["detail"]
        )
        unknown = client.post("/feedback", json={**body, "prediction_id": "nope"}, headers=auth)
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_prediction"
        first = client.post("/feedback", json={**body, "label": "dandelion"}, headers=auth)
        assert first.status_code == 202 and first.json()["replaced"] is False
        # A second feedback on the same prediction replaces the first, counted.
        ok = client.post("/feedback", json=body, headers=auth)
        assert ok.status_code == 202, ok.text
        assert ok.json()["status"] == "pending" and ok.json()["image_kept"] is True
        assert ok.json()["replaced"] is True
        feedback_id = ok.json()["feedback_id"]
        assert feedback_id == first.json()["feedback_id"]

    # Feedback alone never reaches the table.
    assert len(db.load_rows(db.make_engine(url))) == rows_before
    capsys.readouterr()
    queue = str(data / "08_reporting" / "curation_queue.json")
    assert cli.main(["data", "review", "--json", "--queue", queue, "--db-url", url]) == 0
    pending = json.loads(capsys.readouterr().out)["feedback"]
    assert [
        (f["id"], f["prediction_id"], f["true_label"], f["predicted_label"], f["times_filed"])
        for f in pending
    ] == [(feedback_id, pred["prediction_id"], "grass", pred["label"], 2)]
    assert pending[0]["image_sha256"] == sha and pending[0]["comment"] == "all grass"
    # The request's id, which the server's log lines carry (it was the prediction id).
    assert pending[0]["request_id"] == pred["request_id"] != pred["prediction_id"]

    assert cli.main(["data", "feedback", "accept", str(feedback_id), "--db-url", url]) == 0
    assert "accepted: plants_data row" in capsys.readouterr().out
    with pytest.raises(UserFacingError, match="already accepted"):
        db.decide_feedback(db.make_engine(url), feedback_id, True, "again")
    rows = db.load_rows(db.make_engine(url))
    assert len(rows) == rows_before + 1
    new = rows[-1]
    assert (new["label"], new["sha256"], new["status"]) == ("grass", sha, "pending")

    data_project.run("ingestion,formatting")
    row = next(r for r in db.load_rows(db.make_engine(url)) if r["id"] == new["id"])
    assert row["status"] == "ok", row["error"]
    assert (data / "01_raw" / "grass" / f"{sha}.jpg").read_bytes() == photo
    index = pd.read_parquet(data / "03_primary" / "dataset_index.parquet")
    added = index[index["sha256"] == sha]
    assert list(added["label"]) == ["grass"] and list(added["source_id"]) == [new["id"]]
    fp = read_json(data / "03_primary" / "dataset_fingerprint.json")
    assert fp["n_images"] == len(index)


def test_a_prediction_log_made_before_the_uncertain_flag_gains_it_in_place(
    tmp_path, postgres_url, mariadb_url
):
    for url in (f"sqlite:///{tmp_path / 'log.db'}", postgres_url, mariadb_url):
        sink = SqlStore(url)
        old = sa.Table(
            "prediction_log",
            sa.MetaData(),
            *[
                sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                for c in sink.table.columns
                if c.name not in ("uncertain", "prediction_id", "kept_image")
            ],
        )
        old.metadata.create_all(sink.engine)
        with sink.engine.begin() as conn:
            row = prediction_record(0).to_row()
            for column in ("uncertain", "prediction_id", "kept_image"):
                row.pop(column)
            conn.execute(old.insert(), [row])
        new = prediction_record(1)
        new.uncertain = True
        sink.write([new.to_row()])
        with sink.engine.connect() as conn:
            got = conn.execute(
                sa.text("SELECT request_id, uncertain FROM prediction_log ORDER BY id")
            ).all()
        assert [(r[0], None if r[1] is None else bool(r[1])) for r in got] == [
            (prediction_record(0).request_id, None),
            (new.request_id, True),
        ]
        sink.engine.dispose()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PLANTS_UNCERTAIN_BELOW": "1.5"}, "PLANTS_UNCERTAIN_BELOW=1.5 is outside 0..1"),
        ({"PLANTS_KEEP_UNCERTAIN_IMAGES": "maybe"}, "PLANTS_KEEP_UNCERTAIN_IMAGES='maybe'"),
    ],
)
def test_bad_uncertainty_settings_are_refused_clearly(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserFacingError, match=message):
        ServingConfig.from_env()


def test_feedback_without_a_kept_image_can_be_rejected_but_not_accepted(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'plants.db'}"
    engine = db.make_engine(url)
    seen = {"predicted_label": "grass", "confidence": 0.6, "model_version": "1"}  # no image
    first, _ = db.file_feedback(engine, LABELS, prediction_id="p1", true_label="dandelion", **seen)
    second, _ = db.file_feedback(engine, LABELS, prediction_id="p2", true_label="dandelion", **seen)
    with pytest.raises(UserFacingError, match="has no kept image"):
        db.decide_feedback(engine, first, True, "")
    assert db.load_rows(engine) == []  # nothing reached plants_data
    assert (
        cli.main(["data", "feedback", "reject", str(first), "--reason", "blurry", "--db-url", url])
        == 0
    )
    assert f"feedback {first} rejected" in capsys.readouterr().out
    left = db.list_feedback(engine)
    assert [f["id"] for f in left] == [second]
    done = db.list_feedback(engine, status="rejected")
    assert [(f["id"], f["reason"], f["predicted_label"]) for f in done] == [
        (first, "blurry", "grass")
    ]
    # Feedback on a prediction already decided is refused, not filed again.
    with pytest.raises(db.FeedbackDecided, match="already rejected"):
        db.file_feedback(engine, LABELS, prediction_id="p1", true_label="grass", **seen)
    assert cli.main(["data", "feedback", "accept", "99", "--db-url", url]) == 1
    assert "no feedback candidate with id 99" in capsys.readouterr().err


def test_kept_images_are_content_addressed(tmp_path):
    from plants_mlops.serving.feedback import keep_image

    photo = images.sample_jpeg(1)
    first = keep_image(str(tmp_path / "kept"), photo, "jpg")
    second = keep_image(str(tmp_path / "kept"), photo, "jpg")
    sha = hashlib.sha256(photo).hexdigest()
    assert first == second == str(tmp_path / "kept" / f"{sha}.jpg")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [f"{sha}.jpg"]
