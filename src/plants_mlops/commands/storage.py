"""``plants-mlops storage init``: create and configure the project's bucket (MinIO/S3)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    storage = sub.add_parser("storage", help="the object store (MinIO / S3) bucket")
    ssub = storage.add_subparsers(dest="storage_command", metavar="ACTION", required=True)
    init = ssub.add_parser(
        "init",
        help="check credentials, create the bucket, versioning on, prediction-log lifecycle",
        description="Idempotent. Endpoint and keys from PLANTS_S3_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; bucket from PLANTS_S3_BUCKET.",
    )
    init.add_argument("--endpoint-url", help="default: $PLANTS_S3_ENDPOINT_URL")
    init.add_argument("--bucket", help="default: $PLANTS_S3_BUCKET or plants-mlops")
    init.add_argument(
        "--prediction-log-prefix",
        help="prefix the lifecycle rule applies to (default: $PLANTS_PREDICTION_LOG_PREFIX "
        "or prediction-log/)",
    )
    init.add_argument(
        "--expire-days",
        type=int,
        help="days before a prediction-log object expires "
        "(default: $PLANTS_PREDICTION_LOG_EXPIRE_DAYS or 180)",
    )
    init.add_argument("--json", action="store_true", help="print the result as JSON")
    init.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    from plants_mlops.storage import StorageSettings, init_bucket

    settings = StorageSettings.from_env(
        endpoint_url=args.endpoint_url,
        bucket=args.bucket,
        prediction_log_prefix=args.prediction_log_prefix,
        expire_days=args.expire_days,
    )
    report = init_bucket(settings)
    if args.json:
        print(json.dumps(report.__dict__))
    else:
        print("\n".join(report.lines()))
    return 0
