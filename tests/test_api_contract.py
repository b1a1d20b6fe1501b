"""The API's contract is its code: every response the server sends is one its OpenAPI
document lists, errors are one model (``ErrorResponse``), the document is committed
(docs/openapi.json), and schemathesis finds nothing on any check against the real API
under uvicorn (all phases, the stateful one included, admin routes with a key; the
retrain command is ``true``). ``benchmarks/bench_api_contract.py`` runs the same with
more examples (>= 2,000 cases)."""

from __future__ import annotations

from pathlib import Path

import httpx
import jsonschema
import pytest
from support.champion import register_champion, unique_model_name
from support.contract import SERVER_ENV, run_schemathesis
from support.images import sample_jpeg
from support.serving import ADMIN_KEY, running_api

ROOT = Path(__file__).resolve().parents[1]
OPENAPI = ROOT / "docs" / "openapi.json"


def _export_script():
    """scripts/export-openapi.py, which writes docs/openapi.json."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "export_openapi", ROOT / "scripts" / "export-openapi.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def app_openapi() -> dict:
    return _export_script().app_openapi()


@pytest.fixture(scope="module")
def spec() -> dict:
    return app_openapi()


@pytest.fixture(scope="module")
def api(tmp_path_factory, mlflow_tracking_uri):
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    with running_api(
        tmp_path_factory.mktemp("contract-api"),
        tracking_uri=mlflow_tracking_uri,
        model_name=name,
        env=SERVER_ENV,
    ) as running:
        yield running


@pytest.fixture
def client(api):
    with httpx.Client(base_url=api.url, timeout=30) as c:
        yield c


def _operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            yield path, method, op


def _error_schema(spec: dict, path: str, method: str, status: int) -> dict:
    """The documented JSON schema of ``status`` for the operation, refs resolved by the
    validator against the whole document."""
    responses = spec["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    return {**schema, "components": spec["components"]}


def _conforms(spec: dict, path: str, method: str, response: httpx.Response) -> None:
    jsonschema.validate(response.json(), _error_schema(spec, path, method, response.status_code))


def test_the_committed_openapi_document_is_the_apps(spec):
    assert OPENAPI.read_text() == _export_script().render(spec), (
        "docs/openapi.json differs from the app's document: regenerate it with "
        "`.venv/bin/python scripts/export-openapi.py`"
    )


def test_every_error_response_of_every_operation_is_the_one_error_model(spec):
    """Today's bug: 422 was FastAPI's HTTPValidationError (detail a list) while the server
    sends ErrorResponse (detail a string): a generated client failed to parse the errors."""
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, method, op in _operations(spec):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (
                    method,
                    path,
                    status,
                )
        if "requestBody" in op or op.get("parameters"):
            assert "422" in op["responses"], (method, path)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{", 422, "invalid_request"),
        (b"\x0b", 422, "invalid_request"),
        (b"[]", 422, "invalid_request"),
        (b"\xff", 400, "malformed_body"),  # not UTF-8: today an undocumented 400
    ],
    ids=["truncated-json", "not-json", "wrong-type", "not-utf8"],
)
@pytest.mark.parametrize("path", ["/feedback", "/admin/retrain"])
def test_a_malformed_or_invalid_json_body_gets_a_documented_error_response(
    spec, client, path, body, status, error
):
    headers = {"X-API-Key": ADMIN_KEY, "content-type": "application/json"}
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == status, r.text
    _conforms(spec, path, "post", r)
    assert r.json()["error"] == error


def test_the_middlewares_refusals_are_documented_and_answered_as_documented(spec, client):
    """431 (header flood) on every operation and 408 (a client silent mid-body) on those
    with a body: the server sent both, the document listed neither."""
    for path, method, op in _operations(spec):
        assert "431" in op["responses"], (method, path)
        assert ("408" in op["responses"]) == ("requestBody" in op), (method, path)
    r = client.get("/health", headers={f"x-flood-{i}": "1" for i in range(200)})
    assert r.status_code == 431
    _conforms(spec, "/health", "get", r)


def test_options_and_a_wrong_method_name_every_method_of_the_path(spec, client):
    """Today's bug: OPTIONS /admin/retrain answered `allow: POST` though GET exists."""
    documented = {m.upper() for m in spec["paths"]["/admin/retrain"]}
    assert documented == {"GET", "POST"}
    for method in ("OPTIONS", "PUT", "DELETE", "PATCH"):
        r = client.request(method, "/admin/retrain", headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 405, (method, r.text)
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert allowed - {"HEAD"} == documented, (method, r.headers["allow"])
        assert r.json()["error"] == "method_not_allowed"


def test_an_empty_batch_is_refused_as_the_document_says(spec, client):
    """Today's bug: `files=[]` was valid per the document (no minItems) and refused."""
    body = spec["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    name = body["schema"]["$ref"].rpartition("/")[2]
    files = spec["components"]["schemas"][name]["properties"]["files"]
    assert files["minItems"] == 1
    r = client.post("/predict/batch", files={"other": ("x.txt", b"x", "text/plain")})
    assert r.status_code == 422, r.text
    _conforms(spec, "/predict/batch", "post", r)


def test_the_upload_parts_are_documented_as_images(spec, client):
    """The document says what the server checks: the file part is an image (JPEG, PNG,
    WebP, ...), so a client or fuzzer sending schema-valid data sends an image (a batch's
    parts are described so; one that is not an image gets its own error in the 200)."""
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    types = {t.strip() for t in body["encoding"]["file"]["contentType"].split(",")}
    assert {"image/jpeg", "image/png"} <= types, types
    r = client.post("/predict", files={"file": ("x.jpg", sample_jpeg(0, "grass"), "image/jpeg")})
    assert r.status_code == 200, r.text


def test_the_served_document_offers_the_served_models_labels_for_feedback(spec, client):
    """The task is the model's: the served document lists its labels as the feedback
    label's choices (a label outside them is refused with 422), the committed document,
    written with no model loaded, any string."""
    assert "enum" not in spec["components"]["schemas"]["FeedbackRequest"]["properties"]["label"]
    served = client.get("/openapi.json").json()
    label = served["components"]["schemas"]["FeedbackRequest"]["properties"]["label"]
    assert label["enum"] == ["dandelion", "grass"]


def test_schemathesis_finds_nothing_on_any_check_in_all_four_phases(api, tmp_path):
    """Every check (server errors, status codes, content types, headers, response schemas,
    negative and positive data, auth never ignored, Allow headers, stateful links), over the
    examples, coverage, fuzzing and stateful phases, the admin routes with the key. Bounded:
    a few examples per operation, in well under a minute."""
    run = run_schemathesis(api.url, tmp_path, max_examples=12, timeout=120)
    assert run.returncode == 0 and not run.failures, run.output[-8000:]
    assert run.report["complete"] and run.report["operations"]["errored"] == 0
    assert run.report["operations"]["tested"] == len(list(_operations(app_openapi())))
    phases = {p: v["status"] for p, v in run.report["phases"].items()}
    assert phases.pop("examples") in ("success", "skip")  # the document has no examples
    assert phases == {"coverage": "success", "fuzzing": "success", "stateful": "success"}
    assert run.cases >= 250, run.cases
    assert "Traceback" not in api.log_text()
