"""Object-store bootstrap with the ``minio`` client: the bucket every S3 layer lives in.

``init_bucket`` is idempotent and does four things, in this order:

1. checks the credentials (``list_buckets``), so that wrong keys fail in one clear line
   instead of a stack trace from the first pipeline that writes;
2. creates the bucket if it is missing;
3. turns versioning on: an overwritten or deleted object (a model, a dataset index, a
   prediction-log part) can be recovered;
4. sets a lifecycle rule on the prediction-log prefix: parts expire after N days, and the
   versions that expiry (or an overwrite) leaves behind are removed after M more days, so
   versioning does not keep the log forever.

Used by ``plants-mlops storage init``, by ``plants-mlops stack register minio|gpu`` and by
the Kubernetes Job ``storage-init`` (deploy/k8s/base/storage-init-job.yaml).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from plants_mlops.errors import UserFacingError

DEFAULT_BUCKET = "plants-mlops"
DEFAULT_PREDICTION_LOG_PREFIX = "prediction-log/"
DEFAULT_EXPIRE_DAYS = 180
DEFAULT_NONCURRENT_DAYS = 7
LIFECYCLE_RULE_ID = "prediction-log-expiry"
# S3 error codes that mean "these keys are wrong", as opposed to "the bucket is missing".
CREDENTIAL_ERRORS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken"}
)


# `${oc.env:NAME}` without a default: a variable a configuration cannot do without.
_REQUIRED_ENV = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)\}")


def required_env(conf_dirs: list[Path]) -> list[str]:
    """The environment variables the YAML files in ``conf_dirs`` need (no default), sorted."""
    names: set[str] = set()
    for folder in conf_dirs:
        for path in sorted(folder.glob("**/*.yml")) if folder.is_dir() else []:
            names.update(_REQUIRED_ENV.findall(path.read_text(encoding="utf-8")))
    return sorted(names)


def endpoint_problem(url: str, timeout: float = 3.0) -> str | None:
    """Why nothing can be reached at the ``http(s)://host:port`` endpoint, or None."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"{url!r} is not an http(s)://host:port address"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"no server answers at {url} ({exc.strerror or exc})"
    return None


def s3_client_kwargs() -> dict[str, str]:
    """fsspec/s3fs ``client_kwargs`` for the S3 endpoint the pipelines use
    (``PLANTS_S3_ENDPOINT_URL``; without it, AWS's default endpoint)."""
    endpoint = os.environ.get("PLANTS_S3_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


@dataclass(frozen=True)
class StorageSettings:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str = DEFAULT_BUCKET
    prediction_log_prefix: str = DEFAULT_PREDICTION_LOG_PREFIX
    expire_days: int = DEFAULT_EXPIRE_DAYS
    noncurrent_days: int = DEFAULT_NONCURRENT_DAYS

    @classmethod
    def from_env(cls, **overrides: object) -> StorageSettings:
        """From the environment the pipelines and the API read; ``overrides`` win when
        not None."""
        env = os.environ
        values: dict[str, object] = {
            "endpoint_url": env.get("PLANTS_S3_ENDPOINT_URL", ""),
            "access_key": env.get("AWS_ACCESS_KEY_ID", ""),
            "secret_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
            "bucket": env.get("PLANTS_S3_BUCKET") or DEFAULT_BUCKET,
            "prediction_log_prefix": env.get("PLANTS_PREDICTION_LOG_PREFIX")
            or DEFAULT_PREDICTION_LOG_PREFIX,
            "expire_days": int(env.get("PLANTS_PREDICTION_LOG_EXPIRE_DAYS") or DEFAULT_EXPIRE_DAYS),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [
            name
            for name, key in (
                ("PLANTS_S3_ENDPOINT_URL", "endpoint_url"),
                ("AWS_ACCESS_KEY_ID", "access_key"),
                ("AWS_SECRET_ACCESS_KEY", "secret_key"),
            )
            if not values[key]
        ]
        if missing:
            raise UserFacingError(f"set {', '.join(missing)} to initialise the object store")
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StorageReport:
    endpoint_url: str
    bucket: str
    created: bool
    versioning: str
    lifecycle_prefix: str
    expire_days: int
    noncurrent_days: int

    def lines(self) -> list[str]:
        state = "created" if self.created else "exists"
        return [
            f"bucket {self.bucket} on {self.endpoint_url}: {state}",
            f"  versioning: {self.versioning}",
            f"  lifecycle: {self.lifecycle_prefix}* expires after {self.expire_days} days, "
            f"older versions after {self.noncurrent_days} more",
        ]


def client(settings: StorageSettings):
    """A ``minio.Minio`` client for an ``http(s)://host:port`` endpoint URL."""
    import urllib3
    from minio import Minio

    url = urlparse(settings.endpoint_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise UserFacingError(
            f"PLANTS_S3_ENDPOINT_URL must look like http://host:9000, not {settings.endpoint_url!r}"
        )
    # A bootstrap should fail fast on a wrong endpoint: few retries, short connect timeout
    # (the Kubernetes Job retries as a whole until MinIO is up).
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=30.0),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
    )
    return Minio(
        url.netloc,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=url.scheme == "https",
        region=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        http_client=http,
    )


def check_credentials(minio_client, endpoint_url: str) -> None:
    """Raise a one-line :class:`UserFacingError` when the endpoint refuses the keys or
    cannot be reached."""
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    try:
        minio_client.list_buckets()
    except S3Error as exc:
        if exc.code in CREDENTIAL_ERRORS:
            raise UserFacingError(
                f"the S3 endpoint {endpoint_url} refused the credentials ({exc.code}): "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            ) from None
        raise UserFacingError(f"S3 endpoint {endpoint_url}: {exc.code}: {exc.message}") from None
    except HTTPError as exc:
        raise UserFacingError(
            f"cannot reach the S3 endpoint {endpoint_url}: {type(exc).__name__}"
        ) from None


def init_bucket(settings: StorageSettings) -> StorageReport:
    """Check credentials; create the bucket; versioning on; prediction-log lifecycle."""
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import (
        Expiration,
        LifecycleConfig,
        NoncurrentVersionExpiration,
        Rule,
    )
    from minio.versioningconfig import VersioningConfig

    mc = client(settings)
    check_credentials(mc, settings.endpoint_url)
    created = False
    if not mc.bucket_exists(settings.bucket):
        mc.make_bucket(settings.bucket)
        created = True
    mc.set_bucket_versioning(settings.bucket, VersioningConfig(ENABLED))
    rule = Rule(
        ENABLED,
        rule_filter=Filter(prefix=settings.prediction_log_prefix),
        rule_id=LIFECYCLE_RULE_ID,
        expiration=Expiration(days=settings.expire_days),
        noncurrent_version_expiration=NoncurrentVersionExpiration(
            noncurrent_days=settings.noncurrent_days
        ),
    )
    # Keep the bucket's other rules; replace ours.
    existing = mc.get_bucket_lifecycle(settings.bucket)
    others = [r for r in (existing.rules if existing else []) if r.rule_id != LIFECYCLE_RULE_ID]
    mc.set_bucket_lifecycle(settings.bucket, LifecycleConfig([*others, rule]))
    return StorageReport(
        endpoint_url=settings.endpoint_url,
        bucket=settings.bucket,
        created=created,
        versioning=mc.get_bucket_versioning(settings.bucket).status,
        lifecycle_prefix=settings.prediction_log_prefix,
        expire_days=settings.expire_days,
        noncurrent_days=settings.noncurrent_days,
    )
