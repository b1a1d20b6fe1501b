"""`kedro run --env minio`: the same catalog rooted on an S3 bucket (moto's S3 server)."""

from __future__ import annotations

import hashlib
import io
import os

import boto3
import pandas as pd
from data_testlib import (
    SUBSET_VALIDATION,
    manifest_rows,
    mirror_counts,
    mirror_params,
    sample_path,
    seed,
    table,
    write_params,
)


def test_data_pipeline_on_the_minio_env_stores_every_layer_in_the_bucket(
    kedro_project, s3_endpoint, s3_bucket, http_mirror, tmp_path
):
    rows = manifest_rows(per_label=20)
    seed(os.environ["PLANTS_DB_URL"], rows, tmp_path)
    write_params(kedro_project.path, "minio", {**mirror_params(http_mirror), **SUBSET_VALIDATION})
    env = {"PLANTS_S3_ENDPOINT_URL": s3_endpoint, "PLANTS_S3_BUCKET": s3_bucket}

    kedro_project.run("data", env="minio", extra_env=env)

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    }
    raw = {k for k in keys if k.startswith("01_raw/")}
    assert raw == {f"01_raw/{r['label']}/{r['sha256']}.jpg" for r in rows}
    for key in sorted(raw)[:5]:  # the original bytes, untouched
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[1].split(".")[0]
    assert len([k for k in keys if k.startswith("02_intermediate/fmt_images/")]) == 40
    for key in (
        "02_intermediate/fmt_index.parquet",
        "03_primary/dataset_index.parquet",
        "03_primary/dataset_fingerprint.json",
        "08_reporting/ingestion_report.json",
        "08_reporting/validation_report.json",
        "03_primary/near_duplicates.json",
        "08_reporting/curation_review.html",
        "04_feature/curation_embeddings.parquet",  # the embedding cache follows the root
    ):
        assert key in keys
    index = pd.read_parquet(
        io.BytesIO(
            s3.get_object(Bucket=s3_bucket, Key="03_primary/dataset_index.parquet")["Body"].read()
        )
    )
    assert len(index) == 40 and set(index["split"]) <= {"train", "val", "test"}
    stored = table(os.environ["PLANTS_DB_URL"])
    assert (stored["status"] == "ok").all()
    assert stored["url_s3"].str.startswith(f"s3://{s3_bucket}/01_raw/").all()
    # Nothing was written to the local data folder.
    assert not list((kedro_project.path / "data" / "01_raw").rglob("*.jpg"))

    counts = mirror_counts(http_mirror)
    kedro_project.run("ingestion", env="minio", extra_env=env)
    assert all(mirror_counts(http_mirror)[sample_path(r)] == counts[sample_path(r)] for r in rows)
