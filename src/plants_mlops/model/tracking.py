"""MLflow tracking: where it is, whether it answers, and the run a stage logs into.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else the configured value, else the
embedded ``sqlite:///data/mlflow.db`` (MLflow 3's ``./mlruns`` file store refuses runs).
A server URL works the same way; its artifacts may live on S3 (``MLFLOW_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from plants_mlops.errors import UserFacingError

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///data/mlflow.db"
# Fail within seconds, not minutes, when the server is gone (MLflow's default is 7 retries
# with exponential backoff). Users can still override both through the environment.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class TrackingUnavailableError(UserFacingError):
    """The MLflow tracking server/store cannot be reached."""


def tracking_uri(configured: str | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI


def ensure_reachable(uri: str, timeout: float = 5.0, must_exist: bool = False) -> None:
    """Raise TrackingUnavailableError with the reason when ``uri`` does not answer. A local
    SQLite store is created on first use unless ``must_exist`` (commands that only read)."""
    if uri.startswith(("http://", "https://")):
        import httpx

        try:
            r = httpx.get(uri.rstrip("/") + "/health", timeout=timeout)
        except httpx.HTTPError as exc:
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} is unreachable ({type(exc).__name__}: {exc}); "
                "start it or point MLFLOW_TRACKING_URI elsewhere"
            ) from exc
        if r.status_code >= 400:
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} answered /health with HTTP {r.status_code}"
            )
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if must_exist and not path.is_file():
            raise TrackingUnavailableError(
                f"no MLflow store at {path} (from {uri}): run from the project root after "
                "the training pipeline, or set MLFLOW_TRACKING_URI / --tracking-uri"
            )
        path.parent.mkdir(parents=True, exist_ok=True)


def configure(uri: str | None = None, must_exist: bool = False) -> str:
    """Point MLflow at the resolved URI (unless a run is already active: a wrapping ZenML
    step owns the tracking URI then) and check that it answers."""
    import mlflow

    active = mlflow.active_run()
    uri = mlflow.get_tracking_uri() if active else tracking_uri(uri)
    ensure_reachable(uri, must_exist=must_exist)
    if not active:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    return uri


def _experiment_id(name: str, uri: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # Local store: artifacts next to the database, absolute so `mlflow ui` finds them.
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        location = (db.parent / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def run(
    experiment: str, uri: str, run_name: str | None = None, run_id: str | None = None
) -> Iterator:
    """The MLflow run a stage logs into.

    - ``run_id`` given: resume that run (evaluation adds to the training run).
    - ``MLFLOW_RUN_ID`` set (a ZenML step hands its experiment tracker's run over that way):
      resume that run.
    - a run is already active (a ZenML step with the MLflow experiment tracker): log into
      it and leave it open for its owner.
    - otherwise: a new run in ``experiment``, ended (FAILED on error) on exit.
    """
    import mlflow

    active = mlflow.active_run()
    if run_id is None and active is None and os.environ.get("MLFLOW_RUN_ID"):
        run_id = os.environ["MLFLOW_RUN_ID"]
        log.info("resuming the MLflow run %s handed over through MLFLOW_RUN_ID", run_id)
    if run_id is None and active is not None:
        log.info("logging into the already active MLflow run %s", active.info.run_id)
        yield active
        return
    if active is not None and active.info.run_id == run_id:
        yield active
        return
    if run_id is not None:
        # start_run refuses to resume a run of another experiment than the process's
        # active one (set_experiment elsewhere): make the run's experiment the active one.
        mlflow.set_experiment(
            experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id
        )
        with mlflow.start_run(run_id=run_id, nested=active is not None) as r:
            yield r
        return
    exp_id = _experiment_id(experiment, uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as r:
        yield r


def _git(cwd: str | Path | None, *argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD's commit (with ``-dirty`` when the tree has uncommitted changes), or None."""
    try:
        sha = _git(cwd, "rev-parse", "HEAD")
        dirty = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha
