"""The product architecture with its ImageNet weights and an untrained head: the compute of
the real champion, for benchmarks that need a serving model without training one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from plants_mlops import task
from plants_mlops.model import artifact

# The shipped task's labels (conf/base/task.yml): the product model answers them.
LABELS = task.load(conf=Path(__file__).resolve().parents[1] / "conf").labels

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"
TESTS = Path(__file__).resolve().parents[1] / "tests"


def stage_defaults(stage: str) -> dict:
    """``params:<stage>`` as ``conf/base/parameters_<stage>.yml`` ships it."""
    import yaml

    return yaml.safe_load((CONF / f"parameters_{stage}.yml").read_text())[stage]


def product_defaults() -> dict:
    """The product model's shape from the project's parameters: ``architecture`` and
    ``image_size`` (parameters_training.yml), ``resize_size`` (the formatting size the API
    square-resizes to first, parameters_formatting.yml)."""
    training, formatting = stage_defaults("training"), stage_defaults("formatting")
    return {
        "architecture": training["architecture"],
        "image_size": int(training["image_size"]),
        "resize_size": int(formatting["image_size"]),
    }


def untrained_product_model(
    architecture: str, image_size: int, resize_size: int, run_id: str | None = None
) -> tuple[bytes, artifact.ServingMeta]:
    """(ONNX bytes under the serving contract, its serving meta)."""
    from plants_mlops.model.architectures import LITE_VARIANTS, SPECS, build_model
    from plants_mlops.model.export import onnx_bytes

    weights = "imagenet" if architecture in LITE_VARIANTS else None
    model = build_model(
        architecture, n_classes=len(LABELS), image_size=image_size, weights=weights
    ).eval()
    spec = SPECS[architecture]
    meta = artifact.ServingMeta(
        labels=LABELS,
        image_size=image_size,
        resize_size=resize_size,
        mean=spec.mean,
        std=spec.std,
        architecture=architecture,
        mlflow_run_id=run_id,
    )
    return onnx_bytes(model, image_size), meta


def trained_product_model(data, threads: int | None = None) -> tuple[bytes, object, dict]:
    """The default model trained on ``data`` (``model.devdata``'s layers) as the training
    stage does, MLflow off: (its float serving ONNX, that model loaded with ``threads``
    ONNX Runtime threads, the training parameters)."""
    from plants_mlops.pipelines.training.nodes import (
        _serving_meta,
        export_serving_model,
        train_model,
    )

    params = {**stage_defaults("training"), "quiet": True}
    params["mlflow"] = {**params["mlflow"], "enabled": False}
    ckpt, history = train_model(
        data.dataset_index, data.fmt_images, params, data.dataset_fingerprint
    )
    onnx = export_serving_model(ckpt, params)
    model = artifact.ServingArtifact.from_bytes(onnx, _serving_meta(history), threads)
    return onnx, model, params


def server_environment(tracking_uri: str, model_uri: str, db: Path) -> dict[str, str]:
    """The inherited environment plus what a benchmark's ``plants-mlops serve`` needs: the
    registry, the model, its own SQLite database ``db``, no registry polling."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PLANTS_MODEL_URI": model_uri,
        "PLANTS_DB_URL": f"sqlite:///{db}",
        "PLANTS_MODEL_POLL_SECONDS": "0",
    }


def start_server(
    tracking_uri: str, model_uri: str, work: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, int]:
    """``plants-mlops serve`` of ``model_uri`` on a free 127.0.0.1 port, its database and
    log (``serve.log``) under ``work``; returns (process, port) once ``/ready`` answers 200.
    ``env`` adds server settings to the inherited environment. Raises RuntimeError (with the
    log's tail) when the server exits, TimeoutError (the server stopped) after 180 s."""
    import httpx

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from support.servers import VENV_BIN, free_port  # the test suite's helpers

    port = free_port()
    server_env = {**server_environment(tracking_uri, model_uri, work / "plants.db"), **(env or {})}
    log_path = work / "serve.log"
    proc = subprocess.Popen(
        [str(VENV_BIN / "plants-mlops"), "serve", "--port", str(port)],
        env=server_env,
        cwd=work,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        if time.perf_counter() - t0 > 180:
            proc.terminate()
            proc.wait(timeout=60)
            raise TimeoutError("the API was not ready after 180 s")
        time.sleep(0.05)
