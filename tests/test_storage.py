"""``plants-mlops storage init`` (the ``minio`` client) against the suite's S3 server, and
against an S3 server that checks credentials (moto_server with IAM auth on)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from support import servers
from zenml_testlib import cli, zenml_env

from plants_mlops.errors import UserFacingError
from plants_mlops.storage import LIFECYCLE_RULE_ID, StorageSettings, init_bucket

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _bucket() -> str:
    return f"plants-{uuid.uuid4().hex[:10]}"


def _storage_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(servers.VENV_BIN / "plants-mlops"), "storage", "init", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_creates_a_versioned_bucket_with_the_prediction_log_lifecycle_idempotently(
    s3_endpoint,
):
    bucket = _bucket()
    settings = StorageSettings(s3_endpoint, "testing", "testing", bucket, "prediction-log/", 30)
    first = init_bucket(settings)
    assert first.created and first.versioning == "Enabled"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["ID"] == LIFECYCLE_RULE_ID and rule["Status"] == "Enabled"
    assert rule["Filter"] == {"Prefix": "prediction-log/"}
    assert rule["Expiration"] == {"Days": 30}
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 7
    # someone else's rule survives a second run, ours is replaced, not duplicated
    other = {"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}}
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={"Rules": [rule, {**other, "Expiration": {"Days": 1}}]},
    )
    second = init_bucket(StorageSettings(s3_endpoint, "testing", "testing", bucket, expire_days=90))
    assert not second.created
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert set(rules) == {LIFECYCLE_RULE_ID, "tmp"}
    assert rules[LIFECYCLE_RULE_ID]["Expiration"] == {"Days": 90}


def test_the_cli_reads_the_environment_and_prints_what_it_did(s3_endpoint):
    bucket = _bucket()
    env = {**AWS, "PLANTS_S3_ENDPOINT_URL": s3_endpoint, "PLANTS_S3_BUCKET": bucket}
    proc = _storage_cli(env, "--json", "--expire-days", "14")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["bucket"] == bucket and report["created"] is True
    assert report["versioning"] == "Enabled" and report["expire_days"] == 14
    again = _storage_cli(env)
    assert again.returncode == 0
    assert again.stdout.splitlines()[0] == f"bucket {bucket} on {s3_endpoint}: exists"


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """moto_server that authenticates every request after the first three (which create
    a user, its access key and an S3 policy); yields the endpoint and the valid keys."""
    port = servers.free_port()
    log_dir = tmp_path_factory.mktemp("moto-iam")
    server = servers.ManagedProcess(
        "moto_server (IAM auth)",
        [str(servers.VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        health_url=f"http://127.0.0.1:{port}/moto-api/",
        env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        log_path=log_dir / "moto.log",
        traced=False,
    ).start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="plants")
        key = iam.create_access_key(UserName="plants")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="plants", PolicyName="s3", PolicyDocument=json.dumps(policy))
        yield (
            endpoint,
            {
                "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            },
        )
    finally:
        server.stop()


def test_wrong_keys_fail_in_one_clear_line_and_good_keys_work(iam_s3):
    endpoint, keys = iam_s3
    base = {"PLANTS_S3_ENDPOINT_URL": endpoint, "PLANTS_S3_BUCKET": _bucket()}
    wrong_secret = _storage_cli({**base, **keys, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert wrong_secret.returncode == 1
    assert wrong_secret.stderr.strip().splitlines() == [
        f"error: the S3 endpoint {endpoint} refused the credentials (SignatureDoesNotMatch): "
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    ]
    unknown = _storage_cli({**base, **keys, "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNUNKNOWN00"})
    assert unknown.returncode == 1 and "(InvalidAccessKeyId)" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    ok = _storage_cli({**base, **keys})
    assert ok.returncode == 0, ok.stderr


def test_an_unreachable_endpoint_or_missing_settings_fail_in_one_line():
    with pytest.raises(
        UserFacingError, match=r"^cannot reach the S3 endpoint http://127\.0\.0\.1:"
    ):
        init_bucket(StorageSettings(f"http://127.0.0.1:{servers.free_port()}", "a", "b"))
    env = {k: "" for k in ("PLANTS_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    proc = _storage_cli(env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: set PLANTS_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
        "to initialise the object store"
    )


def test_registering_the_minio_stack_bootstraps_its_bucket(s3_endpoint, kedro_project, tmp_path):
    bucket = _bucket()
    env = zenml_env(
        tmp_path / "zenml-home",
        **AWS,
        PLANTS_S3_ENDPOINT_URL=s3_endpoint,
        PLANTS_S3_BUCKET=bucket,
        MLFLOW_TRACKING_URI="http://127.0.0.1:5",
    )
    cli(["stack", "register", "minio", "--no-activate"], env, Path(kedro_project.path))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Filter"] == {"Prefix": "prediction-log/"}


def test_the_cli_reads_the_keys_from_files_as_the_cluster_mounts_them(iam_s3, tmp_path):
    """The cluster mounts secrets as files and sets X_FILE (docs/deploy.md): a wrong key in
    the file is refused by the server, the right one works, X and X_FILE disagreeing fail."""
    endpoint, keys = iam_s3
    files = {}
    for name, value in keys.items():
        (tmp_path / name).write_text(value + "\n")  # a trailing newline, as editors write
        files[f"{name}_FILE"] = str(tmp_path / name)
    base = {"PLANTS_S3_ENDPOINT_URL": endpoint, "PLANTS_S3_BUCKET": _bucket()}
    unset = {name: "" for name in keys}
    ok = _storage_cli({**base, **unset, **files})
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("not-the-secret")
    wrong = _storage_cli({**base, **unset, **files})
    assert wrong.returncode == 1 and "(SignatureDoesNotMatch)" in wrong.stderr
    both = _storage_cli({**base, **keys, **files})
    assert both.returncode == 1
    assert both.stderr.strip() == (
        "error: both AWS_SECRET_ACCESS_KEY and AWS_SECRET_ACCESS_KEY_FILE are set: set one"
    )
