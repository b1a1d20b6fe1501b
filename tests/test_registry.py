"""MLflow tracking and the Model Registry against real ``mlflow server`` processes.

The training/evaluation/registry nodes run in-process on a small dataset built from the
samples (small_cnn, weights null, 64 px). Every test registers under its own model name, so
the session's shared server can hold other tests' models too.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from support import model_data, servers
from support.params import deep_merge, stage_params

from plants_mlops import cli
from plants_mlops.contracts import ALIAS_CHALLENGER, ALIAS_CHAMPION
from plants_mlops.model import registry, tracking
from plants_mlops.pipelines.evaluation.nodes import (
    compile_report,
    evaluate_baselines,
    evaluate_candidate,
    evaluate_champion,
)
from plants_mlops.pipelines.registry.nodes import register_and_gate
from plants_mlops.pipelines.training.nodes import log_training_run, train_model

TRAIN = model_data.SMALL_MODEL  # what conftest's small_model was trained with
# The gate the tests use: no absolute threshold (tiny models), the champion comparison on.
GATE = {"min_f1": 0.0, "require_beat_baseline": False, "champion_tolerance": 0.01}
EVAL = stage_params("evaluation", mlflow={"tracking_uri": None})


@pytest.fixture(scope="module")
def worse(small_data) -> model_data.Trained:
    """Never trained (learning rate 0): the run the gate must refuse."""
    return model_data.Trained(
        small_data, deep_merge(TRAIN, {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.0}})
    )


@pytest.fixture
def model_name() -> str:
    return f"plants-test-{uuid.uuid4().hex[:8]}"


def log_run(trained: model_data.Trained, experiment: str) -> tuple[dict, dict, dict]:
    d = trained.data
    return log_training_run(
        trained.checkpoint,
        trained.onnx,
        trained.history,
        d.dataset_index,
        d.fmt_images,
        d.dataset_fingerprint,
        deep_merge(TRAIN, {"mlflow": {"enabled": True, "experiment": experiment}}),
    )


def evaluate(trained: model_data.Trained, meta: dict, summary: dict, model_name: str) -> dict:
    d = trained.data
    params = deep_merge(EVAL, {"model_name": model_name})
    subset, baselines = params["subset"], params["baselines"]
    return compile_report(
        evaluate_candidate(trained.onnx, meta, d.dataset_index, d.fmt_images, subset),
        evaluate_baselines(meta, d.dataset_index, d.fmt_images, baselines, subset),
        evaluate_champion(meta, d.dataset_index, d.fmt_images, params, subset),
        summary,
        params,
    )[0]


def lifecycle(trained: model_data.Trained, model_name: str) -> tuple[dict, dict, dict]:
    """training (logging) -> evaluation -> registry, as the three pipelines chain them."""
    meta, summary, _ = log_run(trained, model_name)
    report = evaluate(trained, meta, summary, model_name)
    decision = register_and_gate(summary, report, registry_params(model_name))[0]
    return summary, report, decision


def registry_params(model_name: str) -> dict:
    return stage_params("registry", model_name=model_name, gate=GATE)


def run_cli(capsys, uri: str, model_name: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what earlier steps printed (MLflow's "Registered model ...")
    rc = cli.main(["registry", "--tracking-uri", uri, "--model", model_name, *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_training_run_logs_params_metrics_figures_and_the_model(
    small_model, mlflow_tracking_uri, monkeypatch, model_name, tmp_path
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
    meta, summary, _ = log_run(small_model, model_name)
    client = MlflowClient(mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["architecture"] == "small_cnn"
    assert run.data.params["optimizer.lr"] == "0.003"
    assert int(run.data.params["split_size_train"]) == summary["split_sizes"]["train"]
    assert (
        run.data.tags["dataset_fingerprint"] == small_model.data.dataset_fingerprint["fingerprint"]
    )
    assert len(run.data.tags["git_commit"]) >= 40
    history = client.get_metric_history(run.info.run_id, "epoch/val_f1_macro")
    assert [m.step for m in history] == list(range(1, small_model.history["epochs_run"] + 1))
    assert run.data.metrics["test/f1_macro"] == pytest.approx(meta["test_metrics"]["f1_macro"])
    # every metric in a group ("group/name"): the MLflow UI draws one section per group
    assert all("/" in name for name in run.data.metrics), sorted(run.data.metrics)
    figures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"confusion_matrix.png", "roc_curve.png", "pr_curve.png"} <= figures

    folder = Path(mlflow.artifacts.download_artifacts(summary["model_uri"], dst_path=str(tmp_path)))
    assert {"model.onnx", "serving_meta.json", "MLmodel"} <= {p.name for p in folder.iterdir()}
    served = json.loads((folder / "serving_meta.json").read_text())
    assert served["mlflow_run_id"] == run.info.run_id
    assert served["resize_size"] == 160 and served["image_size"] == 64
    assert served["labels"] == ["dandelion", "grass"]
    info = mlflow.models.get_model_info(summary["model_uri"])
    assert info.signature is not None and info.saved_input_example_info is not None
    assert (
        info.metadata["dataset_fingerprint"] == small_model.data.dataset_fingerprint["fingerprint"]
    )
    assert summary["model_size_bytes"] == (folder / "model.onnx").stat().st_size


def test_gate_promotes_a_good_model_and_refuses_a_worse_one(
    small_model, worse, mlflow_tracking_uri, monkeypatch, model_name
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
    client = MlflowClient(mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)
    _, report1, first = lifecycle(small_model, model_name)
    assert first["verdict"] == "pass" and first["aliases"] == [ALIAS_CHAMPION]
    assert report1["champion"] == {"version": None}
    tags = client.get_model_version(model_name, first["model_version"]).tags
    assert tags["verdict"] == "pass"
    assert tags["dataset_fingerprint"] == small_model.data.dataset_fingerprint["fingerprint"]
    assert {"gate.min_f1", "gate.champion_f1", "gate.checks"} <= set(tags)

    _, report2, second = lifecycle(worse, model_name)
    champion_f1 = report2["champion"]["f1_macro"]
    assert report2["champion"]["version"] == first["model_version"]
    assert report2["metrics"]["f1_macro"] < champion_f1 - GATE["champion_tolerance"]
    assert second["verdict"] == "fail"
    assert [c["name"] for c in second["checks"] if not c["passed"]] == ["champion"]
    assert second["aliases"] == [ALIAS_CHALLENGER]
    assert registry.alias_version(client, ALIAS_CHAMPION, model_name) == first["model_version"]
    assert client.get_model_version(model_name, second["model_version"]).tags["verdict"] == "fail"


def test_promote_rollback_and_audit_commands(
    small_model, worse, mlflow_tracking_uri, monkeypatch, model_name, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
    monkeypatch.setenv("PLANTS_MLOPS_ACTOR", "ci-tester")
    client = MlflowClient(mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)
    v1 = lifecycle(small_model, model_name)[2]["model_version"]
    v2 = lifecycle(worse, model_name)[2]["model_version"]

    rc, out, _ = run_cli(capsys, mlflow_tracking_uri, model_name, "list", "--json")
    rows = {r["version"]: r for r in json.loads(out)}
    assert rc == 0 and rows[v1]["aliases"] == [ALIAS_CHAMPION]
    assert rows[v2]["aliases"] == [ALIAS_CHALLENGER] and rows[v2]["verdict"] == "fail"

    rc, out, _ = run_cli(
        capsys,
        mlflow_tracking_uri,
        model_name,
        "promote",
        v2,
        "--force",  # v2 failed the gate: only an explicit, recorded override promotes it
        "--reason",
        "hotfix for a new camera",
    )
    assert rc == 0 and f"champion: {v1} -> {v2}" in out
    assert registry.alias_version(client, ALIAS_CHAMPION, model_name) == v2
    assert registry.alias_version(client, ALIAS_CHALLENGER, model_name) is None

    rc, out, _ = run_cli(capsys, mlflow_tracking_uri, model_name, "rollback")
    assert rc == 0 and f"champion: {v2} -> {v1}" in out
    assert registry.alias_version(client, ALIAS_CHAMPION, model_name) == v1

    rc, out, err = run_cli(capsys, mlflow_tracking_uri, model_name, "rollback", "--to", v2)
    assert rc == 1 and "failed the gate" in err  # v2 failed the gate: no side door
    rc, out, _ = run_cli(
        capsys, mlflow_tracking_uri, model_name, "rollback", "--to", v2, "--force", "--reason", "r"
    )
    assert rc == 0 and registry.alias_version(client, ALIAS_CHAMPION, model_name) == v2

    rc, out, err = run_cli(capsys, mlflow_tracking_uri, model_name, "promote", "99")
    assert rc == 1 and "no version 99" in err
    assert registry.alias_version(client, ALIAS_CHAMPION, model_name) == v2

    rc, out, _ = run_cli(capsys, mlflow_tracking_uri, model_name, "audit", "--json")
    trail = json.loads(out)
    assert [(e["action"], e["alias"], e["from_version"], e["to_version"]) for e in trail] == [
        ("gate-pass", "champion", None, v1),
        ("gate-fail", "challenger", None, v2),
        ("force-promote", "champion", v1, v2),
        ("force-promote", "challenger", v2, None),  # the champion is no longer the challenger
        ("rollback", "champion", v2, v1),
        ("force-rollback", "champion", v1, v2),
    ]
    assert trail[2]["actor"] == "ci-tester" and trail[2]["reason"] == "hotfix for a new camera"
    assert all(e["at"] for e in trail)


def test_a_model_that_fails_to_load_is_never_promoted(
    small_model, mlflow_tracking_uri, monkeypatch, model_name, capsys
):
    from support.champion import register_champion

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
    client = MlflowClient(mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)
    v1 = lifecycle(small_model, model_name)[2]["model_version"]
    broken = register_champion(
        mlflow_tracking_uri, broken=True, set_alias=False, experiment=model_name, name=model_name
    ).version

    rc, _, err = run_cli(capsys, mlflow_tracking_uri, model_name, "promote", str(broken))
    assert rc == 1 and f"version {broken} fails to load" in err
    assert registry.alias_version(client, ALIAS_CHAMPION, model_name) == v1
    rc, _, err = run_cli(capsys, mlflow_tracking_uri, model_name, "rollback", "--to", str(broken))
    assert rc == 1 and "fails to load" in err
    assert registry.alias_version(client, ALIAS_CHAMPION, model_name) == v1
    assert [e["to_version"] for e in registry.audit_trail(client, model_name)] == [v1]


def test_registry_commands_say_clearly_when_mlflow_is_unreachable(capsys):
    uri = f"http://127.0.0.1:{servers.free_port()}"
    for argv in (["list"], ["promote", "1"], ["rollback"], ["audit"]):
        rc, _, err = run_cli(capsys, uri, "plants-classifier", *argv)
        assert rc == 1
        assert f"MLflow tracking server {uri} is unreachable" in err


def test_mlflow_going_down_mid_run_fails_clearly_and_keeps_the_champion(
    small_model, worse, tmp_path, monkeypatch, model_name
):
    workdir = tmp_path / "mlflow"
    with servers.mlflow_server(workdir) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        v1 = lifecycle(small_model, model_name)[2]["model_version"]
        meta, summary, _ = log_run(small_model, model_name)
        report = evaluate(small_model, meta, summary, model_name)
    # The server is gone between evaluation and registry.
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailableError, match="unreachable"):
        register_and_gate(summary, report, registry_params(model_name))
    with pytest.raises(tracking.TrackingUnavailableError, match="unreachable"):
        log_run(worse, model_name)
    with pytest.raises(tracking.TrackingUnavailableError, match="unreachable"):
        train_model(
            small_model.data.dataset_index,
            small_model.data.fmt_images,
            deep_merge(TRAIN, {"mlflow.enabled": True}),
            small_model.data.dataset_fingerprint,
        )
    assert time.monotonic() - t0 < 60
    # Back up on the same store: nothing moved.
    with servers.mlflow_server(workdir) as uri:
        client = MlflowClient(uri, registry_uri=uri)
        assert registry.alias_version(client, ALIAS_CHAMPION, model_name) == v1
        assert [r["version"] for r in registry.list_versions(client, model_name)] == [v1]


def test_lifecycle_on_a_postgresql_backed_tracking_server(
    small_model, postgres_url, tmp_path, monkeypatch, model_name, capsys
):
    with servers.mlflow_server(tmp_path / "mlflow-pg", backend_uri=postgres_url) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        decision = lifecycle(small_model, model_name)[2]
        assert decision["verdict"] == "pass" and decision["champion"] == decision["model_version"]
        rc, out, _ = run_cli(capsys, uri, model_name, "list")
        assert rc == 0 and "champion" in out


def test_registry_commands_do_not_invent_an_empty_local_store(tmp_path, capsys):
    db = tmp_path / "data" / "mlflow.db"
    rc, _, err = run_cli(capsys, f"sqlite:///{db}", "plants-classifier", "list")
    assert rc == 1 and "no MLflow store at" in err
    assert not db.exists()
