"""``create_app``: the FastAPI application with its lifespan (model watcher, prediction log)."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from plants_mlops.retrain import RetrainRunner
from plants_mlops.serving import errors
from plants_mlops.serving.batching import MicroBatcher
from plants_mlops.serving.config import ServingConfig
from plants_mlops.serving.logs import flush_access_log
from plants_mlops.serving.metrics import ServiceMetrics
from plants_mlops.serving.middleware import RequestContextMiddleware
from plants_mlops.serving.model import ModelManager
from plants_mlops.serving.predlog import PredictionLogWriter, make_sink
from plants_mlops.serving.routes import admin, feedback, ops, predict, ui
from plants_mlops.serving.service import PredictionService

log = logging.getLogger("plants_mlops.serving")


class PlantsAPI(FastAPI):
    """FastAPI with ASGI shortcuts: a request whose method and path match one goes
    straight to its raw ASGI app, past Starlette's middleware stack and FastAPI's routing
    (about a third of the event loop's CPU per prediction, docs/serving.md). The route
    stays in FastAPI's router for the OpenAPI schema and the metrics' route label."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shortcuts: dict[tuple[str, str], tuple[object, object]] = {}

    def add_shortcut(self, route, app) -> None:
        for method in route.methods:
            self.shortcuts[(method, route.path)] = (route, app)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            hit = self.shortcuts.get((scope["method"], scope["path"]))
            if hit is not None:
                scope["app"] = self
                scope["route"] = hit[0]
                await hit[1](scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(config: ServingConfig | None = None) -> PlantsAPI:
    config = config or ServingConfig.from_env()
    metrics = ServiceMetrics()
    manager = ModelManager(config)
    manager.on_swap = lambda m: metrics.model_swapped(m.name, m.version, m.meta.labels)
    manager.on_failure = metrics.reload_failures.inc
    retrain = RetrainRunner(
        config.effective_retrain_command(),
        log_dir=Path("data") / "retrain_logs",
        cwd=config.retrain_cwd,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sink = make_sink(config)
        writer = (
            PredictionLogWriter(
                sink,
                batch_size=config.log_batch_size,
                flush_seconds=config.log_flush_seconds,
                retention={
                    "max_age_days": config.log_retention_days,
                    "max_rows": config.log_max_rows,
                },
            )
            if sink is not None
            else None
        )
        app.state.service = PredictionService(config, manager, metrics, writer, retrain)
        batcher = None
        if config.batch_wait_ms > 0:
            batcher = MicroBatcher(
                app.state.service,
                max_batch=config.batch_max,
                wait_ms=config.batch_wait_ms,
                runners=config.batch_runners,
                on_batch=metrics.batch_size.observe,
            )
            batcher.start()
        app.state.batcher = batcher
        log.info(
            "starting: model %s, prediction log %s",
            config.model_uri,
            getattr(sink, "where", "off"),
            extra={
                "event": "startup",
                "poll_seconds": config.poll_seconds,
                "admin_keys": len(config.api_keys),
            },
        )
        manager.start()
        try:
            yield
        finally:
            if batcher is not None:
                await batcher.stop()
            manager.stop()
            metrics.worker_exiting()
            if writer is not None:
                writer.close()
                log.info(
                    "prediction log flushed: %d rows written",
                    writer.written,
                    extra={"event": "prediction_log_closed", "rows": writer.written},
                )
            flush_access_log()

    app = PlantsAPI(
        title=config.title,
        version="1.0",
        description=f"{config.description} GET /model lists the served model's labels; admin "
        "routes need X-API-Key.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: routes/ui.py, from package files (no CDN)
        redoc_url=None,
    )
    errors.install(app)
    upload_limit = config.max_upload_bytes + 64 * 1024  # multipart overhead
    # A batch is bounded in total, not only per file: 32 x 10 MB would be 320 MB in memory.
    batch_limit = min(upload_limit * config.max_batch_files, config.max_batch_bytes)
    context = dict(
        metrics=metrics,
        max_body_bytes=lambda path: batch_limit if path == "/predict/batch" else upload_limit,
        body_timeout=config.body_timeout_seconds,
    )
    app.add_middleware(RequestContextMiddleware, **context)
    app.include_router(ui.router)
    app.include_router(predict.router)
    app.include_router(ops.router)
    app.include_router(admin.router)
    app.include_router(feedback.router)
    app.mount("/static", StaticFiles(directory=ui.STATIC_DIR), name="static")
    app.mount(ui.DOCS_ASSETS_URL, StaticFiles(directory=ui.DOCS_ASSETS), name="docs-static")
    # The hot route, served in raw ASGI inside the same request-context middleware.
    route = next(r for r in predict.router.routes if r.path == "/predict")
    app.add_shortcut(route, RequestContextMiddleware(predict.predict_asgi, **context))
    return app


def create_app_from_env() -> FastAPI:
    """The app of one uvicorn worker process (``serve --workers N``): the settings come
    from the environment the serve command prepared, logging as in the single process."""
    from plants_mlops.serving.logs import configure_json_logging

    configure_json_logging(int(os.environ.get("PLANTS_LOG_LEVEL", logging.INFO)))
    return create_app(ServingConfig.from_env())
