"""End to end through Kedro sessions in process: the data layers (the session's
``built_data`` copy, or the data pipeline on S3), then training, evaluation and registry on
the embedded SQLite MLflow store or a tracking server, then ``plants-mlops registry``."""

from __future__ import annotations

import json
import os

import pytest

from plants_mlops import cli

# A quick model (small CNN, 64 px, a stratified subset) and a gate it can pass; the
# strategy is the default's (the linear probe: training.epochs is then unused).
TRAIN = {
    "training.architecture": "small_cnn",
    "training.weights": "null",
    "training.image_size": 64,
    "training.epochs": 4,
    "training.batch_size": 16,
    "training.max_images_per_split": 60,
    "training.quiet": "true",
}
GATE = {
    "registry.gate.min_f1": 0.0,
    "registry.gate.require_beat_baseline": "false",
    # the small CNN from random weights: no behaviour it could be held to
    "registry.gate.behaviour.min_invariance": 0.0,
    "registry.gate.behaviour.min_mirror_invariance": 0.0,
    "registry.gate.behaviour.min_functionality": 0.0,
    "registry.gate.behaviour.min_ood_flagged": 0.0,
    "registry.gate.behaviour.max_false_flags": 1.0,
}


# int8 whatever the small CNN's F1 does (the F1 rule has its own tests in test_training.py)
INT8 = {"training.serving_precision.mode": "int8", "training.serving_precision.max_f1_drop": 1.0}


@pytest.mark.slow
def test_data_then_model_pipelines_end_with_a_listed_champion(data_project, monkeypatch, capsys):
    # an exclude recorded after formatting: not in the data this version is trained on
    db_url = f"sqlite:///{data_project.path / 'data' / 'plants.db'}"
    argv = ["data", "exclude", "41", "--reason", "after formatting", "--db-url", db_url]
    assert cli.main(argv) == 0
    for pipeline in ("training", "evaluation", "behaviour", "registry"):
        data_project.run(pipeline, params={**TRAIN, **GATE, **INT8})

    data = data_project.path / "data"
    for name in ("model.onnx", "model_fp32.onnx", "model_checkpoint.pt", "serving_meta.json"):
        assert (data / "06_models" / name).stat().st_size > 0
    # the int8 model serves; the float export is kept beside it; the choice is recorded
    choice = json.loads((data / "08_reporting" / "serving_precision.json").read_text())
    assert choice["precision"] == "int8" and choice["mode"] == "int8"
    # the served graph is the int8 model with the OOD detector appended (model/ood.py)
    served_bytes = (data / "06_models" / "model.onnx").stat().st_size
    detector = json.loads((data / "08_reporting" / "ood_detector.json").read_text())
    assert detector["method"] == "knn" and detector["val_flag_rate"] <= 0.05
    assert 0.0 <= detector["train_flag_rate"] <= 0.05  # each training image left out
    assert served_bytes > choice["model_bytes_int8"]
    assert choice["model_bytes_fp32"] == (data / "06_models" / "model_fp32.onnx").stat().st_size
    assert 0.0 <= choice["val_f1_macro_int8"] <= 1.0 and choice["calibration_images"] > 0
    summary = json.loads((data / "08_reporting" / "training_report.json").read_text())
    assert summary["strategy"] == "linear_probe"  # the default strategy, through Kedro
    assert summary["probe_C"] in (0.01, 0.03, 0.1, 0.3, 1.0)
    fingerprint = json.loads((data / "03_primary" / "dataset_fingerprint.json").read_text())
    assert summary["dataset_fingerprint"] == fingerprint["fingerprint"]
    assert summary["mlflow_run_id"] and summary["model_uri"].startswith("models:/")
    meta = json.loads((data / "06_models" / "serving_meta.json").read_text())
    assert meta["mlflow_run_id"] == summary["mlflow_run_id"]
    assert meta["resize_size"] == 160 and meta["image_size"] == 64
    assert meta["precision"] == "int8" and summary["serving_precision"] == choice
    assert meta["ood"] == detector == summary["ood"]
    behaviour = json.loads((data / "08_reporting" / "behaviour_report.json").read_text())
    assert behaviour["mlflow_run_id"] == summary["mlflow_run_id"]
    assert 0.0 <= behaviour["metrics"]["ood_flagged"] <= 1.0

    report = json.loads((data / "08_reporting" / "evaluation_report.json").read_text())
    assert report["mlflow_run_id"] == summary["mlflow_run_id"]
    assert report["champion"] == {"version": None}
    assert set(report["baselines"]) == {"majority_class", "colour_histogram_logreg"}
    assert report["model"]["n"] == summary["split_sizes_used"]["test"]

    decision = json.loads((data / "08_reporting" / "registry_decision.json").read_text())
    assert decision["verdict"] == "pass"
    assert decision["champion"] == decision["model_version"] == "1"

    monkeypatch.chdir(data_project.path)
    capsys.readouterr()
    assert cli.main(["registry", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["aliases"], r["verdict"], r["precision"]) for r in rows] == [
        ("1", ["champion"], "pass", "int8")
    ]
    # the champion's model card, written by the registry pipeline and linked from the version
    card = json.loads((data / "08_reporting" / "model_card.json").read_text())
    assert card["model_version"] == "1" and rows[0]["model_card"] == card["links"]["model_card"]
    md = (data / "08_reporting" / "model_card.md").read_text()
    f1 = card["intervals"]["f1_macro"]
    assert f"| macro F1 | {f1['value']:.4f} [{f1['low']:.4f}, {f1['high']:.4f}] |" in md
    assert f1["value"] == pytest.approx(report["metrics"]["f1_macro"])
    assert "| source host |" in md and "| image size (shorter side) |" in md
    # the decisions of the formatting run that built the version's dataset (none), and the
    # exclude recorded since as waiting for a formatting run
    assert "Curation decisions applied: none" in md and "after formatting" not in md
    assert "1 curation decision recorded since" in md
    assert (data / "08_reporting" / "model_card.html").read_text().count("<table>") >= 5


@pytest.mark.slow
def test_model_pipelines_on_the_minio_env_with_a_tracking_server(
    kedro_project, s3_endpoint, s3_bucket, mlflow_tracking_uri, mlflow_artifacts_bucket, tmp_path
):
    import uuid

    import boto3
    from data_testlib import SUBSET_VALIDATION, manifest_rows, seed, write_params

    seed(os.environ["PLANTS_DB_URL"], manifest_rows(per_label=40), tmp_path)
    write_params(kedro_project.path, "minio", SUBSET_VALIDATION)
    model_name = f"plants-minio-{uuid.uuid4().hex[:8]}"
    env = {
        "PLANTS_S3_ENDPOINT_URL": s3_endpoint,
        "PLANTS_S3_BUCKET": s3_bucket,
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
    }
    kedro_project.run("data", env="minio", extra_env=env)
    params = {**TRAIN, **GATE, "registry.model_name": model_name}
    for pipeline in ("training", "evaluation", "behaviour", "registry"):
        kedro_project.run(pipeline, env="minio", params=params, extra_env=env)

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)

    def keys(bucket: str) -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    stored = keys(s3_bucket)
    for key in (
        "06_models/model.onnx",
        "06_models/model_checkpoint.pt",
        "06_models/serving_meta.json",
        "08_reporting/training_report.json",
        "08_reporting/evaluation_report.json",
        "08_reporting/registry_decision.json",
    ):
        assert key in stored
    assert not list((kedro_project.path / "data" / "06_models").iterdir())
    decision = json.loads(
        s3.get_object(Bucket=s3_bucket, Key="08_reporting/registry_decision.json")["Body"].read()
    )
    assert decision["verdict"] == "pass" and decision["champion"] == decision["model_version"]
    run_id = decision["mlflow_run_id"]
    artifacts = keys(mlflow_artifacts_bucket)
    assert any(run_id in k and k.endswith("figures/confusion_matrix.png") for k in artifacts)
    assert any(k.endswith("/serving_meta.json") and "/models/" in k for k in artifacts)
