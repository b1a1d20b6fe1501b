"""Schemathesis against the running API's own OpenAPI spec (bounded examples per route).

schemathesis' pytest loader (``from_fixture``) breaks on pytest 9, so the test walks the
operations itself and runs each one's Hypothesis strategy. The upload routes skip the
"schema-valid data must be accepted" check: OpenAPI cannot say "bytes that decode as an
image", so random bytes are rightly refused (4xx, tested in test_serving.py)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from support.champion import register_champion, unique_model_name
from support.serving import ADMIN_KEY, running_api


@pytest.fixture(scope="module")
def api(tmp_path_factory, mlflow_tracking_uri):
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    with running_api(
        tmp_path_factory.mktemp("schema-api"),
        tracking_uri=mlflow_tracking_uri,
        model_name=name,
        env={"PLANTS_RETRAIN_COMMAND": "true"},
    ) as running:
        yield running


def _property_test(operation, headers: dict, excluded: list):
    @given(case=operation.as_strategy())
    @settings(
        max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case):
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    return check


@pytest.mark.parametrize("with_key", [False, True], ids=["anonymous", "admin"])
def test_every_route_answers_within_its_documented_schema_and_never_500s(api, with_key):
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    headers = {"X-API-Key": ADMIN_KEY} if with_key else {}
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        excluded = [positive_data_acceptance] if operation.path.startswith("/predict") else []
        _property_test(operation, headers, excluded)()
        checked.append(operation.label)
    assert "POST /predict" in checked and "POST /admin/retrain" in checked
    assert "Traceback" not in api.log_text()
