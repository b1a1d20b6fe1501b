"""Shared fixtures: every server here is real and listens on 127.0.0.1.

- ``s3_endpoint``: moto's S3 API server (``moto_server``, its own process), stands in for MinIO.
- ``http_mirror``: an HTTP server over samples/plants with fault routes.
- ``mlflow_tracking_uri``: ``mlflow server`` (SQLite backend, artifacts on the S3 server).
- ``postgres_url`` / ``mariadb_url``: a fresh database on the machine's servers.
- ``kedro_project``: a throw-away copy of this Kedro project (conf + empty data layers).
- ``built_data`` / ``data_project``: the data layers of the full manifest, built once per
  session; a ``kedro_project`` with a copy of them.
- ``small_data`` / ``small_model``: a 100-image in-memory dataset and a small CNN trained on
  it, once per session, for the model-stage tests that call nodes directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
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
# As `plants-mlops demo` does: MLflow's import leaves the `mlflow` loggers alone (otherwise
# they stop propagating to the root logger, and whether a test sees their records depends
# on whether an earlier test imported mlflow first).
os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
# pytest-xdist workers share the cores: each worker's torch/OpenMP pool (and the pools of
# the processes it starts: kedro, ZenML, uvicorn) gets its share of them, not a pool of
# every core per worker (busy OpenMP threads spinning against each other's).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
# Kedro's logging set-up (`dictConfig`: the root logger's handlers replaced) runs when
# `kedro.framework.project` is first imported and when the package is first configured;
# inside a test it removed that test's `caplog` handler (tests/test_log_capture.py). Done
# here, once per process, before any test; later sessions leave the handlers alone.
_quiet = logging.Filter("nothing")  # its one "Using '...' as logging configuration" line
logging.getLogger("kedro.framework.project").addFilter(_quiet)
from kedro.framework.project import LOGGING as _KEDRO_LOGGING  # noqa: E402

_KEDRO_LOGGING.set_project_logging("plants_mlops")
logging.getLogger("kedro.framework.project").removeFilter(_quiet)
# Test credentials for the moto S3 server only; real ones never live in the repository.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def pytest_configure(config) -> None:
    """pytest-xdist (3.6 and later) hands out ``--dist loadfile`` modules by their number of
    tests, most first, unless ``--no-loadscope-reorder``: that would undo the order below
    (the two-test ZenML module, the longest, went last and left one worker alone for a
    minute at the end)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items) -> None:
    """Modules holding a ``slow`` test first, the ZenML ones (the longest) leading: with
    ``make test``'s workers (pytest-xdist, one module per worker at a time) the long
    modules start at once instead of last, so they do not leave one worker running alone
    at the end. The order within a module is unchanged."""
    slow = {i.module.__name__ for i in items if i.get_closest_marker("slow")}

    def rank(item) -> int:
        name = item.module.__name__
        return 0 if "zenml" in name else 1 if name in slow else 2

    items.sort(key=rank)  # stable: collection order kept within each rank


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def s3_endpoint(logs_dir) -> Iterator[str]:
    with servers.moto_s3(logs_dir / "moto-server.log") as url:
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


class KedroRun:
    """What a finished run left: its exit status and its output, from either runner."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


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
        node_names: list[str] | None = None,
    ) -> KedroRun:
        """``kedro run --pipelines PIPELINE [--nodes ...]`` in this process: a
        ``KedroSession`` on this project (cwd, environment and ``--params`` as the CLI would
        see them). A failed run returns code 1 with the traceback as its stderr (or raises
        when ``check``)."""
        import traceback

        from kedro.framework.session import KedroSession
        from kedro.framework.startup import bootstrap_project
        from omegaconf import OmegaConf

        runtime = OmegaConf.to_container(  # what the CLI's --params parses to
            OmegaConf.from_dotlist([f"{k}={v}" for k, v in (params or {}).items()])
        )
        with environment(extra_env or {}), contextlib.chdir(self.path):
            bootstrap_project(self.path)
            try:
                with KedroSession.create(
                    project_path=self.path, env=env, runtime_params=runtime
                ) as session:
                    session.run(pipeline_names=pipeline.split(","), node_names=node_names)
            except Exception:
                if check:
                    raise
                return KedroRun(1, "", traceback.format_exc())
        return KedroRun(0, "", "")

    def run_cli(
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

    def copy_data_from(self, source: KedroProject) -> KedroProject:
        """This project's data layers and SQLite table replaced by ``source``'s (built
        once per session by ``built_data``), so a test starts where `kedro run --pipelines
        data` left off without running it."""
        data = self.path / "data"
        shutil.rmtree(data)
        shutil.copytree(source.path / "data", data)
        return self


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, as it was afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def new_project(dest: Path) -> KedroProject:
    """A throw-away copy of this Kedro project: conf (no conf/local), empty data layers."""
    dest.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    for layer in ("01_raw", "02_intermediate", "03_primary", "06_models", "08_reporting"):
        (dest / "data" / layer).mkdir(parents=True)
    (dest / "samples").symlink_to(ROOT / "samples")
    # kedro wants a source dir inside the project; the package itself is installed (-e)
    (dest / "src").mkdir()
    return KedroProject(dest)


def project_env(project: KedroProject) -> dict[str, str]:
    """The stores a project copy writes to, isolated from the developer's own."""
    data = project.path / "data"
    return {
        "PLANTS_DB_URL": f"sqlite:///{data / 'plants.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{data / 'mlflow.db'}",
    }


@pytest.fixture
def kedro_project(tmp_path, monkeypatch) -> KedroProject:
    project = new_project(tmp_path / "project")
    for name, value in project_env(project).items():
        monkeypatch.setenv(name, value)
    return project


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``ROOT/name`` made by ``build(ROOT/name)`` once for the whole test run: with
    pytest-xdist workers, ROOT is the folder their temp roots share and the first worker
    builds while the others wait on a file lock, then reuse it. Callers treat it as
    read-only (tests copy from it)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    target, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            build(target)
            done.touch()
    return target


@pytest.fixture(scope="session")
def built_data(tmp_path_factory) -> KedroProject:
    """`kedro run --pipelines data` on the full shipped manifest (400 images, offline from
    the sample folder), in process, once per test run (shared by the xdist workers); tests
    copy its data layers."""

    def build(folder: Path) -> None:
        folder.mkdir()
        project = new_project(folder / "project")
        project.run("data", extra_env=project_env(project))

    return KedroProject(built_once(tmp_path_factory, "built-data", build) / "project")


@pytest.fixture
def data_project(kedro_project, built_data) -> KedroProject:
    """``kedro_project`` with the data layers and table of ``built_data`` copied in."""
    return kedro_project.copy_data_from(built_data)


@pytest.fixture(scope="session")
def zenml_local(tmp_path_factory):
    """``zenml_testlib.LocalZenml``: the `local` stack and one full ZenML pipeline run on a
    40-image project copy, shared by the ZenML pipeline and dashboard tests."""
    from zenml_testlib import LocalZenml, small_project, zenml_env

    tmp = tmp_path_factory.mktemp("zenml-local")
    project = new_project(tmp / "project")
    stores = project_env(project)
    small_project(project.path, "local", tmp, db_url=stores["PLANTS_DB_URL"])
    return LocalZenml(project.path, zenml_env(tmp / "zenml-home", **stores), tmp)


@pytest.fixture(scope="session")
def small_data():
    """100 sample images (50 per label) in the layout of the data layers, in memory."""
    from support import model_data

    return model_data.build(per_label=50)


@pytest.fixture(scope="session")
def small_model(small_data):
    """A small CNN trained and exported by the training nodes on ``small_data``."""
    from support import model_data

    return model_data.Trained(small_data, model_data.SMALL_MODEL)
