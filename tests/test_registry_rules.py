"""The champion moves only through the gate or an explicit, recorded override.

Small real models (tests/support/champion.py) in a temporary SQLite store; the registry
CLI and the registry node are called in process.
"""

from __future__ import annotations

import pytest
from support.champion import log_candidate, register_champion
from support.params import stage_params

from plants_mlops import cli
from plants_mlops.contracts import ALIAS_CHAMPION
from plants_mlops.model import registry, tracking
from plants_mlops.pipelines.registry.nodes import register_and_gate

NAME = "plants-classifier"


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_cli(capsys, uri: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["registry", "--tracking-uri", uri, "--model", NAME, *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_promoting_a_version_that_failed_the_gate_needs_force_and_a_reason(store, capsys):
    v1 = register_champion(store).version
    v2 = register_champion(store, seed=1, set_alias=False).version
    cl = tracking.client(store)
    cl.set_model_version_tag(NAME, v2, "verdict", "fail")

    rc, _, err = run_cli(capsys, store, "promote", v2)
    assert rc == 1 and f"version {v2} failed the gate" in err and "--force" in err
    rc, _, err = run_cli(capsys, store, "promote", v2, "--force")
    assert rc == 1 and "--reason" in err
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v1

    rc, out, _ = run_cli(capsys, store, "promote", v2, "--force", "--reason", "camera hotfix")
    assert rc == 0 and f"-> {v2}" in out
    entry = registry.audit_trail(cl)[-1]
    assert entry["action"] == "force-promote" and entry["reason"] == "camera hotfix"
    assert entry["gate_verdict"] == "fail"
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v2


def test_rollback_walks_back_through_the_champion_history(store, capsys):
    v1, v2, v3 = (register_champion(store, seed=s).version for s in range(3))
    cl = tracking.client(store)
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v3

    assert run_cli(capsys, store, "rollback")[0] == 0
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v2
    assert run_cli(capsys, store, "rollback")[0] == 0  # not back to v3
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v1
    rc, _, err = run_cli(capsys, store, "rollback")
    assert rc == 1 and "no previous champion" in err
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v1


def _reports(logged, champion: dict) -> tuple[dict, dict]:
    training_report = {
        "mlflow_run_id": logged.run_id,
        "model_id": logged.model_id,
        "model_uri": logged.model_uri,
        "artifact_location": logged.artifact_location,
    }
    evaluation_report = {
        "mlflow_run_id": logged.run_id,
        "dataset_fingerprint": "f" * 64,
        "best_baseline_f1_macro": 0.5,
        "champion": champion,
        "metrics": {"f1_macro": 0.95, "accuracy": 0.95},
    }
    return training_report, evaluation_report


def test_one_training_run_registers_once_and_a_rerun_says_so(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    logged, _ = log_candidate(store)
    training_report, evaluation_report = _reports(logged, {"version": None})
    params = stage_params("registry")
    first, _ = register_and_gate(training_report, evaluation_report, params)
    assert first["verdict"] == "pass" and first["champion"] == first["model_version"]

    again, summary = register_and_gate(training_report, evaluation_report, params)
    assert again["model_version"] == first["model_version"]
    assert again["already_registered"] is True and "nothing changed" in again["detail"]
    assert summary["model_version"] == first["model_version"]
    assert [r["version"] for r in registry.list_versions(tracking.client(store))] == ["1"]
    assert len(registry.audit_trail(tracking.client(store))) == 1


def test_the_gate_refuses_when_the_champion_moved_since_evaluation(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    logged, _ = log_candidate(store)
    training_report, evaluation_report = _reports(logged, {"version": None})
    other = register_champion(store, seed=5).version  # a champion appears after evaluation
    with pytest.raises(registry.RegistryError, match="champion moved from none to 1"):
        register_and_gate(training_report, evaluation_report, stage_params("registry"))
    cl = tracking.client(store)
    assert registry.alias_version(cl, ALIAS_CHAMPION) == other
    assert [r["version"] for r in registry.list_versions(cl)] == [other]


def test_a_locked_store_is_a_one_line_error(tmp_path, capsys):
    import sqlite3

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.client(store).search_experiments()  # the store exists, with MLflow's tables
    lock = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        rc, _, err = run_cli(capsys, store, "list")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert rc == 1
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert "store is locked by another process" in err
