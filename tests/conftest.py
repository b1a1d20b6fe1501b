"""Shared fixtures: every server here is real and listens on 127.0.0.1.

- ``s3_endpoint``: moto's S3 API server (threaded, real HTTP), stands in for MinIO.
- ``http_mirror``: an HTTP server over samples/plants with fault routes.
- ``mlflow_tracking_uri``: ``mlflow server`` (SQLite backend, artifacts on the S3 server).
- ``postgres_url`` / ``mariadb_url``: a fresh database on the machine's servers.
- ``kedro_project``: a throw-away copy of this Kedro project (conf + empty data layers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import servers

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "plants"
PUBLIC_PREFIX = "https://raw.githubusercontent.com/btphan95/greenr-airflow/refs/heads/master/data/"

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("ZENML_AUTO_OPEN_DASHBOARD", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Test credentials for the moto S3 server only; real ones never live in the repository.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with servers.moto_s3() as url:
        yield url


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A new, empty bucket on the S3 server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def http_mirror(logs_dir) -> Iterator[str]:
    """Base URL of a real HTTP server mirroring the public dataset URLs (see FAULTS)."""
    with servers.http_mirror(SAMPLES, logs_dir / "http-mirror.log") as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_artifacts_bucket(s3_endpoint) -> str:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mlflow-artifacts")
    return "mlflow-artifacts"


@pytest.fixture(scope="session")
def mlflow_tracking_uri(tmp_path_factory, s3_endpoint, mlflow_artifacts_bucket) -> Iterator[str]:
    """A real MLflow tracking server: SQLite backend, artifacts proxied to the S3 server."""
    workdir = tmp_path_factory.mktemp("mlflow-server")
    with servers.mlflow_server(
        workdir,
        artifacts_destination=f"s3://{mlflow_artifacts_bucket}/",
        env={"MLFLOW_S3_ENDPOINT_URL": s3_endpoint},
    ) as uri:
        yield uri


def _create_database(kind: str) -> tuple[str, callable]:
    import sqlalchemy as sa

    servers.ensure_local_databases()
    name = f"plants_test_{uuid.uuid4().hex[:8]}"
    if kind == "postgresql":
        admin = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    else:
        admin = "mysql+pymysql://root@127.0.0.1:3306/"
        url = f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    try:
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # the machine page promises both servers; say so loudly
        pytest.fail(f"{kind} server not reachable on 127.0.0.1: {exc}")

    def drop() -> None:
        engine.dispose()
        with sa.create_engine(admin, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))

    return url, drop


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url, drop = _create_database("postgresql")
    yield url
    drop()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    url, drop = _create_database("mysql")
    yield url
    drop()


class KedroProject:
    """A copy of the project's configuration with empty data layers, in a temp folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(
        self,
        pipeline: str,
        env: str | None = None,
        params: dict | None = None,
        extra_env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run the real ``kedro run`` CLI in this project; returns the finished process."""
        argv = [str(servers.VENV_BIN / "kedro"), "run", "--pipelines", pipeline]
        if env:
            argv += ["--env", env]
        if params:
            argv += ["--params", ",".join(f"{k}={v}" for k, v in params.items())]
        proc = subprocess.run(
            argv,
            cwd=self.path,
            env={**os.environ, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kedro run --pipelines {pipeline} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
            )
        return proc


@pytest.fixture
def kedro_project(tmp_path, monkeypatch) -> KedroProject:
    dest = tmp_path / "project"
    dest.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    for layer in ("01_raw", "02_intermediate", "03_primary", "06_models", "08_reporting"):
        (dest / "data" / layer).mkdir(parents=True)
    (dest / "samples").symlink_to(ROOT / "samples")
    # kedro wants a source dir inside the project; the package itself is installed (-e)
    (dest / "src").mkdir()
    # Isolate every store the project writes to from the developer's own.
    monkeypatch.setenv("PLANTS_DB_URL", f"sqlite:///{dest / 'data' / 'plants.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{dest / 'data' / 'mlflow.db'}")
    return KedroProject(dest)
