"""``create_app``: the FastAPI application with its lifespan (model watcher, prediction log)."""

from __future__ import annotations

import copy
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from plants_mlops import memory
from plants_mlops.model import tracking
from plants_mlops.retrain import RetrainRunner
from plants_mlops.serving import errors
from plants_mlops.serving.config import ServingConfig
from plants_mlops.serving.metrics import ServiceMetrics
from plants_mlops.serving.middleware import RequestContextMiddleware
from plants_mlops.serving.model import ModelManager
from plants_mlops.serving.predlog import PredictionLogWriter, make_sink
from plants_mlops.serving.routes import admin, explain, feedback, ops, predict, ui
from plants_mlops.serving.service import PredictionService

log = logging.getLogger("plants_mlops.serving")


def create_app(config: ServingConfig | None = None) -> FastAPI:
    config = config or ServingConfig.from_env()
    metrics = ServiceMetrics()
    manager = ModelManager(config)
    manager.on_swap = lambda m: metrics.model_swapped(m.name, m.version, m.meta.labels)
    manager.on_failure = metrics.reload_failures.inc
    retrain = RetrainRunner(
        config.effective_retrain_command(),
        log_dir=Path("data") / "retrain_logs",
        db_url=config.db_url,
        cwd=config.retrain_cwd,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sink = make_sink(config)
        writer = None
        if sink is not None:
            writer = PredictionLogWriter(
                sink,
                batch_size=config.log_batch_size,
                flush_seconds=config.log_flush_seconds,
                spill_dir=Path(config.log_spill_dir),
                retention={
                    "max_age_days": config.log_retention_days,
                    "max_rows": config.log_max_rows,
                },
            )
        app.state.service = PredictionService(config, manager, metrics, writer, retrain)
        log.info(
            "starting: model %s, prediction log %s",
            config.model_uri,
            getattr(sink, "where", "off"),
            extra={"event": "startup", "poll_seconds": config.poll_seconds},
        )
        manager.start()
        try:
            yield
        finally:
            manager.stop()
            metrics.worker_exiting()
            if writer is not None:
                writer.close()
                log.info(
                    "prediction log flushed: %d rows written",
                    writer.written,
                    extra={"event": "prediction_log_closed", "rows": writer.written},
                )

    app = FastAPI(
        title=config.title,
        version="1.0",
        description=f"{config.description} GET /model lists the served model's labels; admin "
        "routes need X-API-Key.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: routes/ui.py, from package files (no CDN)
        redoc_url=None,
    )
    errors.install(app)
    documented = app.openapi

    def openapi() -> dict:
        """The document, with the served model's labels as the feedback label's choices: the
        task is the model's, so a champion with other labels changes the contract."""
        model = manager.current
        if model is None:
            return documented()
        schema = copy.deepcopy(documented())
        label = schema["components"]["schemas"]["FeedbackRequest"]["properties"]["label"]
        label["enum"] = list(model.meta.labels)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    upload_limit = config.max_upload_bytes + 64 * 1024  # multipart overhead
    # A batch is bounded in total, not only per file: 32 x 10 MB would be 320 MB in memory.
    batch_limit = min(upload_limit * config.max_batch_files, config.max_batch_bytes)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=lambda path: (
            batch_limit if path.endswith("/predict/batch") else upload_limit
        ),
        body_timeout=config.body_timeout_seconds,
        max_inflight_bytes=config.max_inflight_bytes,
    )
    for router in (
        ui.router,
        predict.router,
        explain.router,
        ops.router,
        admin.router,
        feedback.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=ui.STATIC_DIR), name="static")
    app.mount(ui.DOCS_ASSETS_URL, StaticFiles(directory=ui.DOCS_ASSETS), name="docs-static")
    return app


def server_process_settings() -> None:
    """What a serving process sets for itself (``serve``, each of its workers): a hung
    tracking server costs a reload seconds, not minutes (MLflow's own HTTP calls); large
    allocations (a decoded upload's pixel blocks) come from mmap and go back to the OS when
    freed, as in the pipelines' memory-heavy nodes (memory.py)."""
    tracking.bound_http_calls(timeout_s=5, retries=1)
    memory.set_mmap_threshold(memory.SERVING_MMAP_THRESHOLD)


def create_app_from_env() -> FastAPI:
    """The app of one uvicorn worker process (``serve --workers N``): the settings come
    from the environment the serve command prepared, logging as in the single process."""
    from plants_mlops.serving.logs import configure_json_logging

    configure_json_logging(int(os.environ.get("PLANTS_LOG_LEVEL", logging.INFO)))
    server_process_settings()
    return create_app(ServingConfig.from_env())
