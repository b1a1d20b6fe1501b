"""MLflow tracking: where it is, whether it answers, and the run a stage logs into.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else the configured value, else the
embedded ``sqlite:///data/mlflow.db`` (MLflow 3's ``./mlruns`` file store refuses runs).
A server URL works the same way; its artifacts may live on S3 (``MLFLOW_S3_ENDPOINT_URL``).

Everything here goes through an explicit :class:`mlflow.MlflowClient` built for one URI:
nothing sets MLflow's process-wide tracking or registry URI, so one process (a test
session, a ZenML step) can talk to several stores without one call redirecting another.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plants_mlops.contracts import DEFAULT_TRACKING_URI
from plants_mlops.errors import UserFacingError

log = logging.getLogger(__name__)

# Fail within seconds, not minutes, when the server is gone (MLflow's default is 7 retries
# with exponential backoff). Users can still override both through the environment.
_USER_SET = {
    k for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT") if k in os.environ
}
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def bound_http_calls(timeout_s: float, retries: int) -> None:
    """Tighter limits on MLflow's HTTP calls for a process that must answer quickly (the
    API: a hung tracking server must not hold a reload, or a thread, for minutes); what the
    user set in the environment stays. MLflow reads them at each request."""
    if "MLFLOW_HTTP_REQUEST_TIMEOUT" not in _USER_SET:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout_s)))
    if "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in _USER_SET:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(retries))


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


def client(uri: str | None = None, must_exist: bool = False):
    """A client for ``uri`` (an explicit choice: a flag, a test), else for
    :func:`tracking_uri`, with the registry on the same store, after checking that the
    store answers. Stage nodes pass ``tracking_uri(params.mlflow.tracking_uri)``, so that
    ``MLFLOW_TRACKING_URI`` wins over the YAML."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    ensure_reachable(uri, must_exist=must_exist)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(cl, name: str) -> str:
    """The id of experiment ``name``, created on first use.

    In an embedded SQLite store artifacts go to ``mlartifacts/`` beside the database. When
    the store's URI is relative (the default ``sqlite:///data/mlflow.db``, relative to the
    project root where every command runs), so is the artifact location recorded for the
    experiment, and with it every run's and model's: a copied or moved project (``data/``
    with it) keeps working. MLflow itself always records an absolute path, so the row is
    rewritten right after creation."""
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = cl.tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        location = (db.parent.resolve() / "mlartifacts").as_uri()
    try:
        exp_id = cl.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = cl.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
    if uri.startswith("sqlite:///") and not db.is_absolute():
        _relative_artifact_location(
            uri, exp_id, f"{(db.parent / 'mlartifacts').as_posix()}/{exp_id}"
        )
    return exp_id


def _relative_artifact_location(uri: str, exp_id: str, location: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE experiments SET artifact_location = :loc WHERE experiment_id = :id"
                ),
                {"loc": location, "id": int(exp_id)},
            )
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Run:
    """One MLflow run, logged into through its client (the fluent API's process-wide
    state is never used)."""

    client: Any
    run_id: str
    experiment_id: str

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-call limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, data: Any, path: str) -> None:
        self.client.log_dict(self.run_id, data, path)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_png(self, png: bytes, path: str) -> None:
        from PIL import Image

        self.client.log_image(self.run_id, Image.open(io.BytesIO(png)), artifact_file=path)

    def log_file(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_dir)


# MLflow 3's UI opens an experiment on its GenAI views (traces) unless the experiment says
# it holds model training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"


def mark_model_development(cl, exp_id: str) -> None:
    """Tag the experiment so that the MLflow UI opens it on its training runs."""
    with contextlib.suppress(Exception):  # a read-only store: the UI only opens elsewhere
        cl.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


# A shell that once ran inside an MLflow run keeps ``MLFLOW_RUN_ID``; honoured silently, it
# would send every training run into that one old run.
ALLOW_RUN_ID_ENV = "PLANTS_ALLOW_MLFLOW_RUN_ID"


def inherited_run_id() -> str | None:
    """``MLFLOW_RUN_ID`` from the environment, when asked for: ``PLANTS_ALLOW_MLFLOW_RUN_ID``
    is ``1`` or that run's ID (a ZenML step handing its tracker's run over). Set without
    it: a :class:`UserFacingError` naming both variables."""
    run_id = os.environ.get("MLFLOW_RUN_ID") or None
    if run_id is None or os.environ.get(ALLOW_RUN_ID_ENV) in ("1", run_id):
        return run_id
    raise UserFacingError(
        f"MLFLOW_RUN_ID={run_id} is set in the environment, so training would log into that "
        f"run instead of a new one: `unset MLFLOW_RUN_ID`, or set {ALLOW_RUN_ID_ENV}=1 to "
        "log into it"
    )


@contextlib.contextmanager
def open_run(
    cl, experiment: str, run_name: str | None = None, run_id: str | None = None
) -> Iterator[Run]:
    """The MLflow run a stage logs into.

    - ``run_id`` given: that run (evaluation adds to the training run); left as it was.
    - ``MLFLOW_RUN_ID`` set and allowed (:func:`inherited_run_id`; a ZenML step hands its
      experiment tracker's run over that way): that run, left open for its owner.
    - otherwise: a new run in ``experiment``, ended FINISHED (FAILED on error) on exit.
    """
    run_id = run_id or inherited_run_id()
    if run_id is not None:
        info = cl.get_run(run_id).info
        mark_model_development(cl, info.experiment_id)
        yield Run(cl, run_id, info.experiment_id)
        return
    exp_id = experiment_id(cl, experiment)
    mark_model_development(cl, exp_id)
    created = cl.create_run(exp_id, run_name=run_name)
    run = Run(cl, created.info.run_id, exp_id)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):  # the store may be what failed
            cl.set_terminated(run.run_id, "FAILED")
        raise
    cl.set_terminated(run.run_id, "FINISHED")


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
