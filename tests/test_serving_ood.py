"""The API says "not a photo of my task": a champion of the product's recipe (frozen
Lite0 + linear probe, its OOD detector in the graph) under a real uvicorn process flags a
cat photo and a page of text (real images that scikit-image ships), not a dandelion; the
score goes to the response, the prediction log and Prometheus."""

from __future__ import annotations

import io
import sqlite3
import time

import httpx
import pytest
from PIL import Image
from support.champion import unique_model_name
from support.ood_champion import register_ood_champion
from support.serving import running_api

from plants_mlops.model import behaviour

pytestmark = pytest.mark.slow


def _png(dist_path: tuple[str, str]) -> bytes:
    with Image.open(behaviour.photo_path(*dist_path)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


CAT = behaviour.REPORT_PHOTOS["cat_chelsea"]
PAGE = behaviour.REPORT_PHOTOS["text_page"]
DANDELION = "samples/behaviour/clear/dandelion/00000003.jpg"


@pytest.fixture(scope="module")
def served(tmp_path_factory, mlflow_tracking_uri, small_data):
    name = unique_model_name("plants-ood")
    champion = register_ood_champion(mlflow_tracking_uri, name, small_data)
    workdir = tmp_path_factory.mktemp("api-ood")
    with running_api(workdir, tracking_uri=mlflow_tracking_uri, model_name=name) as api:
        yield api, champion, workdir


def test_a_cat_photo_and_a_page_of_text_are_flagged_a_dandelion_is_not(served):
    api, champion, workdir = served
    threshold = champion.meta["ood"]["threshold"]
    dandelion = open(DANDELION, "rb").read()  # noqa: SIM115 (a test's small read)
    with httpx.Client(base_url=api.url, timeout=60) as client:
        answers = {}
        for name, data, ctype in (
            ("cat.png", _png(CAT), "image/png"),
            ("page.png", _png(PAGE), "image/png"),
            ("dandelion.jpg", dandelion, "image/jpeg"),
        ):
            r = client.post("/predict", files={"file": (name, data, ctype)})
            assert r.status_code == 200, r.text
            answers[name] = r.json()
        batch = client.post(
            "/predict/batch",
            files=[
                ("files", ("cat.png", _png(CAT), "image/png")),
                ("files", ("dandelion.jpg", dandelion, "image/jpeg")),
            ],
        ).json()
        spec = client.get("/openapi.json").json()
        metrics = client.get("/metrics").text

    for name in ("cat.png", "page.png"):
        assert answers[name]["out_of_distribution"] is True, answers[name]
        assert answers[name]["ood_score"] > threshold
    assert answers["dandelion.jpg"]["out_of_distribution"] is False
    assert answers["dandelion.jpg"]["ood_score"] <= threshold
    assert answers["dandelion.jpg"]["label"] == "dandelion"
    flags = [item["prediction"]["out_of_distribution"] for item in batch["items"]]
    assert flags == [True, False]

    fields = spec["components"]["schemas"]["PredictionResponse"]["properties"]
    assert {"out_of_distribution", "ood_score"} <= set(fields)
    assert fields["out_of_distribution"].get("description")
    flagged = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("plants_predictions_out_of_distribution_total{")
    ]
    assert flagged and float(flagged[0].rsplit(" ", 1)[1]) == 3.0  # cat, page, batch cat

    deadline = time.monotonic() + 10
    rows: list = []
    while time.monotonic() < deadline and len(rows) < 5:
        with sqlite3.connect(workdir / "plants.db") as db:
            rows = db.execute(
                "SELECT out_of_distribution, ood_score FROM prediction_log ORDER BY id"
            ).fetchall()
        time.sleep(0.2)
    assert [bool(r[0]) for r in rows] == [True, True, False, True, False]
    assert all(r[1] is not None for r in rows)
