"""Start ``plants-mlops serve`` as a real uvicorn process on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from support import servers

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

ADMIN_KEY = "test-admin-key-not-a-secret"


@dataclass
class RunningApi:
    url: str
    process: servers.ManagedProcess
    log_path: Path
    workdir: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.stop()


def wait_ready(url: str, timeout: float = 120.0) -> None:
    """Until ``/ready`` stops answering 503 (the model is loaded)."""
    servers.wait_http(f"{url}/ready", timeout=timeout)


def _serve_env(
    workdir: Path,
    tracking_uri: str,
    model_name: str,
    db_url: str | None,
    env: dict[str, str] | None,
) -> dict[str, str]:
    """The serving settings of a test API, in or out of process: ``env`` over these."""
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PLANTS_MODEL_URI": f"models:/{model_name}@champion",
        "PLANTS_DB_URL": db_url or f"sqlite:///{workdir / 'plants.db'}",
        "PLANTS_API_KEYS": ADMIN_KEY,
        "PLANTS_MODEL_POLL_SECONDS": "0",
        "PLANTS_PREDICTION_LOG_FLUSH_SECONDS": "0.2",
        "PLANTS_RETRAIN_COMMAND": "true",
        # One process unless a test asks for more (serve's default is one per core).
        "PLANTS_SERVE_WORKERS": "1",
        **(env or {}),
    }


@contextlib.contextmanager
def running_api(
    workdir: Path,
    *,
    tracking_uri: str,
    model_name: str,
    db_url: str | None = None,
    env: dict[str, str] | None = None,
    wait_for_model: bool = True,
) -> Iterator[RunningApi]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    log_path = workdir / f"serve-{port}.log"
    full_env = _serve_env(workdir, tracking_uri, model_name, db_url, env)
    proc = servers.ManagedProcess(
        "plants-mlops serve",
        [
            str(servers.VENV_BIN / "plants-mlops"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        health_url=f"http://127.0.0.1:{port}/health",
        env={**os.environ, **full_env},
        log_path=log_path,
        cwd=workdir,
    ).start(timeout=120)
    api = RunningApi(f"http://127.0.0.1:{port}", proc, log_path, workdir)
    try:
        if wait_for_model:
            wait_ready(api.url)
        yield api
    finally:
        proc.stop()


@contextlib.contextmanager
def api_in_process(
    workdir: Path,
    *,
    tracking_uri: str,
    model_name: str,
    db_url: str | None = None,
    env: dict[str, str] | None = None,
    wait_for_model: bool = True,
) -> Iterator[TestClient]:
    """The app ``plants-mlops serve`` runs (``create_app``), with ``running_api``'s settings
    (read by ``ServingConfig.from_env`` as the serve command reads them), served in this
    process through Starlette's ``TestClient`` in ``workdir``: no uvicorn, no port, no process start (the
    tests that moved here each took 2-3.5 s less). For the routes and the model lifecycle;
    the tests where the server process is the point (a signal, worker processes, a
    Prometheus scrape, a browser, the JSON log lines) use ``running_api``. Yields the
    client."""
    import time
    from unittest import mock

    from fastapi.testclient import TestClient

    from plants_mlops.serving.app import create_app
    from plants_mlops.serving.config import ServingConfig

    workdir.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, _serve_env(workdir, tracking_uri, model_name, db_url, env)):
        config = ServingConfig.from_env()
    with contextlib.chdir(workdir), TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 120
        while wait_for_model and client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the model never loaded"
            time.sleep(0.05)
        yield client


@contextlib.contextmanager
def predict_burst(url: str, clients: int = 4) -> Iterator[list[tuple[int, str | None, float]]]:
    """``clients`` threads posting sample JPEGs to ``/predict`` until the block ends; yields
    the list they fill with (status, model_version or None, time.monotonic())."""
    import threading
    import time

    import httpx

    from support import images

    results: list[tuple[int, str | None, float]] = []
    stop = threading.Event()

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            i = worker
            while not stop.is_set():
                data = images.sample_jpeg(i % 50, "dandelion" if i % 2 else "grass")
                r = c.post("/predict", files={"file": ("x.jpg", data, "image/jpeg")})
                version = r.json().get("model_version") if r.status_code == 200 else None
                results.append((r.status_code, version, time.monotonic()))
                i += clients

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        stop.set()
        for t in threads:
            t.join()


def prediction_record(i: int, created_at=None):
    """A small, valid record as the API hands it to the prediction log (prediction ``p{i}``,
    request ``r{i}``)."""
    from datetime import UTC, datetime

    import numpy as np
    from PIL import Image

    from plants_mlops.serving.predlog import PredictionRecord

    return PredictionRecord(
        prediction_id=f"p{i}",
        request_id=f"r{i}",
        created_at=created_at or datetime.now(UTC),
        model_version="1",
        label="grass",
        probabilities={"dandelion": 0.2, "grass": 0.8},
        latency_ms=3.0,
        image_format="jpg",
        orig_width=10,
        orig_height=10,
        image=Image.new("RGB", (16, 16), (0, 128, 0)),
        embedding=np.arange(4, dtype=np.float32),
    )
