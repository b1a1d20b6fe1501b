"""The ZenML pipeline on the `minio` stack: ZenML's S3 artifact store and the Kedro `minio`
environment on the S3 API server (moto), MLflow on a real tracking server."""

from __future__ import annotations

import boto3
import mlflow
import pytest
from zenml_testlib import TINY_TRAINING, cli, pipeline_run, small_project, zenml_env


@pytest.mark.slow
def test_zenml_run_on_the_minio_stack_stores_artifacts_in_the_bucket_and_registers_on_mlflow(
    kedro_project, s3_endpoint, s3_bucket, mlflow_tracking_uri, tmp_path
):
    small_project(kedro_project.path, "minio", tmp_path)
    env = zenml_env(
        tmp_path / "zenml-home",
        PLANTS_S3_ENDPOINT_URL=s3_endpoint,
        PLANTS_S3_BUCKET=s3_bucket,
        MLFLOW_TRACKING_URI=mlflow_tracking_uri,
        MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
    )
    reg = cli(["stack", "register", "minio"], env, kedro_project.path)
    assert "plants-s3-store [s3]" in reg.stdout and "validation: ok" in reg.stdout

    run = pipeline_run(["--params", *TINY_TRAINING], env, kedro_project.path, tmp_path / "run.json")
    assert run["status"] == "completed" and run["stack"] == "minio" and run["env"] == "minio"
    summaries = run["summaries"]

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    }
    # Kedro's catalog on S3 ...
    assert len([k for k in keys if k.startswith("01_raw/")]) == 40
    assert "03_primary/dataset_fingerprint.json" in keys
    assert any(k.startswith("06_models/") for k in keys)
    # ... and ZenML's artifact store: one summary artifact per step.
    zenml_keys = [k for k in keys if k.startswith("zenml/")]
    for stage in run["stages"]:
        assert any(f"/{stage}/" in k for k in zenml_keys), stage
    assert not list((kedro_project.path / "data" / "01_raw").rglob("*.jpg"))

    # MLflow server: the tracker's run holds what the training nodes logged, and the
    # registry version points at it.
    client = mlflow.MlflowClient(mlflow_tracking_uri)
    run_id = summaries["training"]["mlflow_run_id"]
    mlrun = client.get_run(run_id)
    assert mlrun.data.tags.get("zenml") and "test/f1_macro" in mlrun.data.metrics
    version = summaries["registry"]["model_version"]
    assert client.get_model_version("plants-classifier", version).run_id == run_id
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    assert artifacts  # stored through the server on the S3 API
