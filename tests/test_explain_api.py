"""``POST /explain`` and the model card link of ``GET /model`` through a real
``plants-mlops serve``, on a champion trained by the training nodes (conftest's
``small_model``, exported with its class maps)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from support import images
from support.champion import register_champion, unique_model_name
from support.params import base_labels
from support.serving import running_api

LABELS = base_labels()


@pytest.fixture(scope="module")
def served(tmp_path_factory, mlflow_tracking_uri, small_model):
    name = unique_model_name("plants-explain")
    champion = register_champion(mlflow_tracking_uri, name=name, onnx=small_model.onnx)
    card = "mlflow-artifacts:/somewhere/model_card/model_card.html"
    MlflowClient(mlflow_tracking_uri).set_model_version_tag(
        name, champion.version, "model_card", card
    )
    with (
        running_api(
            tmp_path_factory.mktemp("explain-api"),
            tracking_uri=mlflow_tracking_uri,
            model_name=name,
        ) as api,
        httpx.Client(base_url=api.url, timeout=60) as client,
    ):
        yield client, card


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _explain(client, picture: Image.Image, **params) -> httpx.Response:
    files = {"file": ("lawn.jpg", _jpeg(picture), "image/jpeg")}
    return client.post("/explain", files=files, params=params)


def test_the_hottest_cell_moves_with_the_yellow_disc(served):
    client, _ = served
    hottest = {}
    for side, x in (("left", 35), ("right", 125)):
        r = _explain(client, images.yellow_disc_on_grass(x), label="dandelion")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["explained_label"] == "dandelion" and body["label"] in LABELS
        grid = np.asarray(body["grid"])
        assert grid.shape == (4, 4)  # small_cnn at 64 px: stride 16
        assert (body["hottest"]["row"], body["hottest"]["col"]) == np.unravel_index(
            grid.argmax(), grid.shape
        )
        overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
        assert overlay.format == "PNG" and overlay.size == (64, 64) == (body["image_size"],) * 2
        hottest[side] = body["hottest"]["col"]
    assert hottest["left"] < 2 <= hottest["right"], hottest


def test_explain_defaults_to_the_predicted_label_and_refuses_an_unknown_one(served):
    client, _ = served
    r = _explain(client, images.yellow_disc_on_grass(80))
    assert r.status_code == 200 and r.json()["explained_label"] == r.json()["label"]
    probabilities = r.json()["probabilities"]
    assert r.json()["label"] == max(probabilities, key=probabilities.get)
    r = _explain(client, images.yellow_disc_on_grass(80), label="clover")
    assert r.status_code == 404 and r.json()["error"] == "unknown_label"


def test_several_images_on_explain_are_refused_not_explained_for_the_last(served):
    client, _ = served
    files = [
        ("file", ("a.jpg", _jpeg(images.yellow_disc_on_grass(20)), "image/jpeg")),
        ("file", ("b.jpg", _jpeg(images.yellow_disc_on_grass(80)), "image/jpeg")),
    ]
    r = client.post("/explain", files=files)
    assert r.status_code == 422, r.text
    assert "one image" in r.json()["detail"] and r.json()["error"] == "invalid_request"


def test_openapi_documents_explain_and_the_model_card_link(served):
    client, card = served
    spec = client.get("/openapi.json").json()
    explain = spec["paths"]["/explain"]["post"]
    ref = explain["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"grid", "hottest", "overlay_png", "explained_label"} <= set(schema["properties"])
    assert "model_card" in spec["components"]["schemas"]["ModelResponse"]["properties"]
    assert client.get("/model").json()["model_card"] == card
